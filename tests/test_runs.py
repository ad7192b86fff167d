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
