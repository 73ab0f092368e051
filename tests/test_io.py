import os
from pathlib import Path

import pytest

import mmmatch._io as io_mod
from mmmatch._io import atomic_dir, atomic_file


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_atomic_file_writes_and_replaces(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    assert atomic_file(target, lambda p: p.write_text("one")) == target
    assert target.read_text() == "one"
    atomic_file(target, lambda p: p.write_text("two"))
    assert target.read_text() == "two"
    assert _leftovers(target.parent) == []


def test_atomic_file_failure_keeps_old_file_and_cleans_up(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def write(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_file(target, write)
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_dir_creates_and_replaces(tmp_path):
    target = tmp_path / "index"
    with atomic_dir(target) as tmp:
        assert tmp != target and tmp.parent == tmp_path
        (tmp / "a.txt").write_text("v1")
    assert (target / "a.txt").read_text() == "v1"
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert _leftovers(tmp_path) == []


def test_atomic_dir_error_inside_keeps_old_folder(tmp_path):
    target = tmp_path / "index"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v2")
        raise RuntimeError("crash while writing")
    assert (target / "a.txt").read_text() == "v1"
    assert _leftovers(tmp_path) == []


def test_atomic_dir_refuses_to_replace_a_file(tmp_path):
    target = tmp_path / "index"
    target.write_text("I am a file")
    with pytest.raises(FileExistsError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("x")
    assert target.read_text() == "I am a file"
    assert _leftovers(tmp_path) == []


def test_atomic_dir_failure_of_final_rename_keeps_old_folder(tmp_path, monkeypatch):
    target = tmp_path / "index"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    real_replace = os.replace

    def failing_replace(src, dst):
        if ".tmp-" in str(src):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v2")
    monkeypatch.undo()
    assert (target / "a.txt").is_file()
    assert (target / "a.txt").read_text() == "v1"
    assert _leftovers(tmp_path) == []
