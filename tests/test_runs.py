import json
from pathlib import Path

import pytest

from tunesmith.runs import atomic_open, write_jsonl


def test_atomic_write_leaves_old_file_on_failure(tmp_path: Path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(path, rows())
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temp file left behind


def test_atomic_open_creates_parents(tmp_path: Path):
    with atomic_open(tmp_path / "a" / "b.txt") as f:
        f.write("x")
    assert (tmp_path / "a" / "b.txt").read_text() == "x"


def test_atomic_files_get_normal_permissions(tmp_path: Path):
    import os

    write_jsonl(tmp_path / "x.jsonl", [])
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "x.jsonl").stat().st_mode & 0o777 == 0o666 & ~umask


# ---- output collisions -------------------------------------------------------------------------

GOOD_ROW = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _data(path: Path, n: int = 3) -> Path:
    rows = [
        {**GOOD_ROW, "messages": [GOOD_ROW["messages"][0], {"role": "assistant", "content": f"a{i}"}]} for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _spellings(tmp_path: Path, target: Path) -> list[Path]:
    """The same file spelled four ways: relative-with-dotdot, symlink, hard link, plain."""
    import os

    (tmp_path / "sub").mkdir(exist_ok=True)
    link = tmp_path / "link.jsonl"
    if not link.exists():
        link.symlink_to(target)
    hard = tmp_path / "hard.jsonl"
    if not hard.exists() and target.exists():
        os.link(target, hard)
    dotdot = Path(os.path.relpath(tmp_path / "sub" / ".." / target.name))
    return [target, dotdot, link] + ([hard] if hard.exists() else [])


def test_check_outputs_refuses_an_input_as_output_however_spelled(tmp_path: Path, monkeypatch):
    from tunesmith.runs import RunError, check_outputs

    monkeypatch.chdir(tmp_path)
    src = _data(tmp_path / "in.jsonl")
    for spelling in _spellings(tmp_path, src):
        with pytest.raises(RunError, match="--output .* would overwrite input"):
            check_outputs({"input": src}, {"--output": spelling})
    check_outputs({"input": src}, {"--output": tmp_path / "out.jsonl"})  # distinct: fine


def test_check_outputs_refuses_two_outputs_in_one_file(tmp_path: Path, monkeypatch):
    from tunesmith.runs import RunError, check_outputs

    monkeypatch.chdir(tmp_path)
    src = _data(tmp_path / "in.jsonl")
    with pytest.raises(RunError, match="--rejects x.jsonl is the same file as --output"):
        check_outputs({"input": src}, {"--output": tmp_path / "x.jsonl", "--rejects": "x.jsonl"})


def test_check_outputs_refuses_uncreatable_outputs(tmp_path: Path):
    from tunesmith.runs import RunError, check_outputs

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(RunError, match="is a file, not a directory"):
        check_outputs({}, {"--report": blocker / "deeper" / "r.json"})
    with pytest.raises(RunError, match="is a directory"):
        check_outputs({}, {"--output": tmp_path})


@pytest.mark.parametrize("kind", ["same", "input", "input-as-rejects", "symlink", "hardlink"])
def test_clean_never_writes_over_its_input_or_itself(tmp_path: Path, kind: str):
    import os

    from tunesmith.config import DataConfig
    from tunesmith.data.clean import clean_file
    from tunesmith.runs import RunError

    src = _data(tmp_path / "in.jsonl")
    before = src.read_bytes()
    out, rejects = tmp_path / "x.jsonl", tmp_path / "r.jsonl"
    if kind == "same":
        rejects = out
    elif kind == "input":
        out = src
    elif kind == "input-as-rejects":
        out = rejects = src
    elif kind == "symlink":
        out.symlink_to(src)
    else:
        os.link(src, out)
    with pytest.raises(RunError):
        clean_file(src, out, rejects, config=DataConfig())
    assert src.read_bytes() == before


def test_convert_refuses_to_overwrite_its_input(tmp_path: Path):
    from tunesmith.data.convert import convert_file
    from tunesmith.runs import RunError

    src = _data(tmp_path / "in.jsonl")
    before = src.read_bytes()
    with pytest.raises(RunError, match="would overwrite input"):
        convert_file(src, tmp_path / "." / "in.jsonl")
    assert src.read_bytes() == before


# ---- the run-directory lock --------------------------------------------------------------------


def test_run_lock_refuses_a_second_holder_and_says_who(tmp_path: Path):
    import os
    import subprocess
    import sys

    from tunesmith.runs import LOCK_FILE, RunError, run_lock

    run = tmp_path / "run"
    # Another process holds it (flock is per open file, so a second process is the honest test).
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tunesmith.runs import run_lock\n"
            f"with run_lock({str(run)!r}):\n    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=rf"in use: `train` by pid {holder.pid} on .* since "):
            with run_lock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    # Its holder died without cleaning up (SIGKILL): the lock file still names it, and is taken over.
    assert str(holder.pid) in (run / LOCK_FILE).read_text()
    with run_lock(run):
        assert str(os.getpid()) in (run / LOCK_FILE).read_text()


def test_run_lock_takes_over_a_stale_lock_file(tmp_path: Path):
    from tunesmith.runs import LOCK_FILE, run_lock

    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 999999999, "host": "elsewhere", "since": "yesterday"}))
    with run_lock(tmp_path):
        pass


def test_changed_keys_names_what_a_resume_changed():
    from tunesmith.runs import changed_keys

    old = "name: a\ntrain:\n  lr: 0.001\n  epochs: 1\nlora:\n  r: 8\n"
    new = "name: b\ntrain:\n  lr: 0.002\n  epochs: 1\n  seed: 3\nlora:\n  r: 8\n"
    assert changed_keys(old, new) == ["name", "train.lr", "train.seed"]
    assert changed_keys(old, old) == []


def test_manifest_fingerprints_the_data(tmp_path):
    import hashlib

    from tunesmith.runs import build_manifest, sha256_file

    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"messages": []}\n' * 1000)
    assert sha256_file(data) == hashlib.sha256(data.read_bytes()).hexdigest()
    manifest = build_manifest("train", data_path=data, rows=1000, mixed_precision="fp32")
    assert manifest["data"] == {"path": str(data), "sha256": sha256_file(data), "rows": 1000}
    assert manifest["stage"] == "train" and manifest["hardware"]["mixed_precision"] == "fp32"
    assert set(manifest["versions"]) >= {"python", "torch", "transformers", "peft", "accelerate"}
