"""The code suite: tests pass or fail, and hostile programs stay inside the sandbox."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from tunesmith.config import CodeSuiteConfig, EvalConfig
from tunesmith.evaluate.suites import ScoreRow, get_suite
from tunesmith.evaluate.suites.code import extract_code, isolation_available

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
needs_isolation = pytest.mark.skipif(
    not isolation_available(), reason="needs root and util-linux unshare (network/mount/pid namespaces)"
)


def _score(prediction: str, tests: str | None = TESTS, **code) -> dict:
    suite = get_suite("code", EvalConfig(code=CodeSuiteConfig(**code)))
    extra = {} if tests is None else {"tests": tests}
    return suite.score([ScoreRow(id="r", prompt="write add", prediction=prediction, extra=extra)])[0]


def test_extract_code():
    assert extract_code("Sure:\n```python\ndef f():\n    return 1\n```\nDone.") == "def f():\n    return 1\n"
    assert extract_code("def f(): pass") == "def f(): pass"


def test_passing_and_failing_programs():
    good = _score("```python\ndef add(a, b):\n    return a + b\n```")
    assert good["passed"] and good["error"] is None
    bad = _score("def add(a, b):\n    return a - b")
    assert not bad["passed"] and "AssertionError" in bad["error"]
    syntax = _score("def add(a, b) return a")
    assert not syntax["passed"] and "SyntaxError" in syntax["error"]
    assert _score("def add(a, b): return a + b", tests=None)["error"].startswith("no tests")
    metadata = get_suite("code").score(
        [ScoreRow(id="m", prompt="", prediction="def add(a, b): return a + b", extra={"metadata": {"tests": TESTS}})]
    )
    assert metadata[0]["passed"]
    suite = get_suite("code")
    summary = suite.summarize([good, bad, syntax])
    assert summary["n"] == 3 and summary["pass_rate"] == pytest.approx(1 / 3) and summary["timeouts"] == 0


def test_sleeping_forever_times_out():
    start = time.monotonic()
    result = _score("import time\ndef add(a, b):\n    time.sleep(1000)", timeout_s=1.0)
    assert time.monotonic() - start < 10
    assert result["timed_out"] and not result["passed"] and "timed out" in result["error"]
    assert get_suite("code").summarize([result])["timeouts"] == 1


def test_memory_limit():
    result = _score("x = bytearray(2 * 1024**3)\ndef add(a, b): return a + b", memory_mb=256)
    assert not result["passed"] and "MemoryError" in result["error"]


@needs_isolation
def test_forked_children_die_with_the_program(tmp_path: Path):
    # A child that outlives the timeout would keep running; in the PID namespace it dies with it.
    program = (
        "import os, time\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(1000)\n"
        "    except OSError:\n"
        "        break\n"
        "def add(a, b): return a + b\n"
        "time.sleep(1000)\n"
    )
    result = _score(program, timeout_s=2.0, max_processes=8)
    assert result["timed_out"]
    deadline = time.monotonic() + 10  # the kernel reaps the namespace's processes asynchronously
    while (leftover := _nobody_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftover == []


def _nobody_processes() -> list[Path]:
    return [p for p in Path("/proc").iterdir() if p.name.isdigit() and _uid(p) == 65534]


def _uid(proc: Path) -> int | None:
    try:
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@needs_isolation
def test_fork_bomb_hits_the_process_limit():
    program = (
        "import os\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            import time; time.sleep(30)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    pass\n"
        "print(n)\n"
        "def add(a, b): return a + b\n"
        "assert n < 16, n\n"
        "os._exit(0)\n"
    )
    result = _score(program, tests="pass", timeout_s=5.0, max_processes=8)
    assert result["passed"], result


@needs_isolation
def test_no_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True)
    thread.start()
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\ndef add(a, b): return a + b"
    result = _score(program)
    server.close()
    assert not result["passed"]
    assert "Network is unreachable" in result["error"], result["error"]
    assert accepted == []


@needs_isolation
def test_nothing_outside_the_scratch_directory_is_writable(tmp_path: Path):
    target_dir = tmp_path / "outside"
    target_dir.mkdir()
    target_dir.chmod(0o777)  # even a world-writable directory: /tmp is a fresh tmpfs inside
    project = Path(__file__).resolve().parent / "written-by-sandbox.txt"
    program = (
        "import os\n"
        f"open({str(target_dir / 'x.txt')!r}, 'w').write('pwned') if os.path.isdir({str(target_dir)!r}) else None\n"
        "open('scratch.txt', 'w').write('fine')\n"  # its own directory: allowed
        f"open({str(project)!r}, 'w').write('pwned')\n"
        "def add(a, b): return a + b\n"
    )
    result = _score(program)
    # Refused (PermissionError), or not even there: a checkout under /tmp lies inside the sandbox's
    # fresh tmpfs, so the write fails with FileNotFoundError instead. Either way nothing gets out.
    assert not result["passed"]
    assert "PermissionError" in result["error"] or "FileNotFoundError" in result["error"]
    assert not (target_dir / "x.txt").exists()
    assert not project.exists()
    assert result["isolation"].startswith("netns")
