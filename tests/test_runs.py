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
