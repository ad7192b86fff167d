"""`code`: does the generated Python pass the example's tests?

The program is the code from the output (a fenced ```python block, else the whole text) followed
by the row's tests (its `tests` field, or `metadata.tests`: plain Python, usually `assert`s); it
passes when it exits 0 within the time limit.

Generated code is untrusted, so it runs in a sandbox (`run_sandboxed`):
- as root with util-linux `unshare` (this project's CI): new network namespace (no interface but
  a downed loopback: every connection fails), new mount namespace with fresh tmpfs over /tmp,
  /var/tmp, /run/lock and /dev/shm (the world-writable places; the program's scratch directory is
  on that tmpfs and vanishes with it), new PID namespace (when the program ends or is killed, every
  process it forked dies with it), then privileges dropped to `nobody` with no_new_privs: nothing
  outside the scratch directory is writable, and the process limit applies (root ignores it);
- rlimits in every case: address space (`memory_mb`), CPU seconds, file size, processes, no core
  dumps; a wall-clock timeout kills the whole process group;
- elsewhere (no root, no unshare) the program runs with the rlimits and a scratch directory only,
  and each row's `isolation` says so: the network and the user's files are then reachable.

Summary keys: `n`, `pass_rate`, `timeouts`, plus `isolation` (what the sandbox could apply).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tunesmith.config import CodeSuiteConfig, EvalConfig
from tunesmith.evaluate.suites import ScoreRow, register

_FENCE = re.compile(r"```[ \t]*(\w*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
NOBODY = 65534
FULL = "netns+mountns+pidns+nobody"
NONE = "rlimits-only (network reachable, the user's files writable: run as root with unshare for isolation)"
# In the sandbox: private mounts, fresh tmpfs over every world-writable directory, the program
# (read from stdin) into a scratch directory owned by nobody, then exec as nobody.
_SANDBOX_SCRIPT = r"""
set -e
mount --make-rprivate /
for d in /tmp /var/tmp /run/lock /dev/shm; do
  [ -d "$d" ] && mount -t tmpfs -o size=64m,mode=1777 tmpfs "$d"
done
mkdir /tmp/work
cat > /tmp/work/main.py
chown -R 65534:65534 /tmp/work
cd /tmp/work
exec setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs --inh-caps=-all "$0" -I main.py
"""


def extract_code(text: str) -> str:
    """The program in a model's output: the first ```python block (else the first fenced block), else the text."""
    blocks = _FENCE.findall(text or "")
    if blocks:
        python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
        return (python or [blocks[0][1]])[0]
    return text or ""


@dataclass
class RunResult:
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    isolation: str


def _world_executable(path: Path) -> bool:
    """Can `nobody` run this file? Every directory on the way must be world-searchable."""
    path = path.resolve()
    if not path.is_file() or not path.stat().st_mode & stat.S_IXOTH:
        return False
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)


@functools.lru_cache(maxsize=1)
def sandbox_python() -> str:
    """The interpreter the sandbox runs: this one if `nobody` may execute it (a venv under /root
    may not), else the system's. The program gets `-I`: no site-packages of ours, no environment."""
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if candidate and _world_executable(Path(candidate)):
            return str(Path(candidate).resolve())
    return sys.executable


@functools.lru_cache(maxsize=1)
def isolation_available() -> bool:
    """Root, and namespaces can be made here (a container may forbid them)."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        return False
    probe = subprocess.run(
        ["unshare", "--net", "--mount", "--pid", "--fork", "sh", "-c", "mount -t tmpfs tmpfs /tmp"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


def _limits(config: CodeSuiteConfig) -> Any:
    import resource

    def apply() -> None:
        memory = config.memory_mb * 1024 * 1024
        cpu = int(config.timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024, 16 * 1024 * 1024))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (config.max_processes, config.max_processes))

    return apply


def run_sandboxed(source: str, config: CodeSuiteConfig | None = None) -> RunResult:
    """Run a Python program in the sandbox the module docstring describes."""
    config = config or CodeSuiteConfig()
    python = sandbox_python()
    scratch = None
    if isolation_available():
        cmd = ["unshare", "--net", "--mount", "--pid", "--fork", "sh", "-c", _SANDBOX_SCRIPT, python]
        isolation, cwd = FULL, "/"
    else:
        scratch = tempfile.mkdtemp(prefix="tunesmith-code-")
        Path(scratch, "main.py").write_text(source, encoding="utf-8")
        cmd, isolation, cwd = [python, "-I", "main.py"], NONE, scratch
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        preexec_fn=_limits(config),  # noqa: PLW1509 - rlimits must be set in the child before exec
        start_new_session=True,  # its own process group: a timeout kills everything it started
    )
    try:
        out, err = proc.communicate(source.encode() if scratch is None else b"", timeout=config.timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        with _suppress_lookup():
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return RunResult(
        None if timed_out else proc.returncode,
        timed_out,
        out.decode(errors="replace")[-2000:],
        err.decode(errors="replace")[-2000:],
        isolation,
    )


class _suppress_lookup:  # noqa: N801
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *_: Any) -> bool:
        return kind is ProcessLookupError


def row_tests(row: ScoreRow) -> str | None:
    tests = row.extra.get("tests")
    metadata = row.extra.get("metadata")
    if tests is None and isinstance(metadata, dict):
        tests = metadata.get("tests")
    if isinstance(tests, list):
        tests = "\n".join(map(str, tests))
    return tests if isinstance(tests, str) and tests.strip() else None


@register
class CodeSuite:
    name: ClassVar[str] = "code"

    def __init__(self, config: EvalConfig):
        self.config = config.code

    def score(self, rows: Sequence[ScoreRow]) -> list[dict[str, Any]]:
        return [self._score_one(row) for row in rows]

    def _score_one(self, row: ScoreRow) -> dict[str, Any]:
        tests = row_tests(row)
        if tests is None:
            return {"passed": False, "timed_out": False, "error": "no tests: give the row a `tests` field"}
        program = f"{extract_code(row.prediction)}\n\n# ---- tests ----\n{tests}\n"
        result = run_sandboxed(program, self.config)
        error = None
        if result.timed_out:
            error = f"timed out after {self.config.timeout_s:g} s (eval.code.timeout_s)"
        elif result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            error = lines[-1] if lines else f"exit status {result.returncode}"
        return {
            "passed": result.returncode == 0 and not result.timed_out,
            "timed_out": result.timed_out,
            "returncode": result.returncode,
            "error": error,
            "isolation": result.isolation,
        }

    def summarize(self, scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
        n = len(scores)
        return {
            "n": n,
            "pass_rate": sum(s["passed"] for s in scores) / n if n else None,
            "timeouts": sum(s["timed_out"] for s in scores),
            "isolation": FULL if isolation_available() else NONE,
        }
