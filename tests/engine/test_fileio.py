"""The one atomic writer behind every file of a run: the target is the old file or the whole
new one, never a part; a storage failure names the file; killed writes are cleaned up."""
import errno
import json
import os
import stat

import pytest
import torch

from reid.engine import fileio
from reid.engine.fileio import (
    FileWriteError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
)


def test_every_kind_of_content_round_trips(tmp_path):
    atomic_write_bytes(str(tmp_path / "b.bin"), b"\x00\x01")
    atomic_write_text(str(tmp_path / "t.txt"), "héllo\n")
    atomic_write_json(str(tmp_path / "r.json"), {"mAP": 0.5, "ids": [1, 2]})
    atomic_torch_save({"w": torch.arange(3)}, str(tmp_path / "sub" / "ck.pth"))  # creates the directory
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "r.json").read_text()) == {"mAP": 0.5, "ids": [1, 2]}
    assert torch.equal(torch.load(tmp_path / "sub" / "ck.pth", weights_only=True)["w"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "r.json", "sub", "t.txt"]  # no temporaries


def test_new_files_get_the_usual_permissions_and_rewrites_keep_theirs(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_text(str(tmp_path / "results.json"), "{}")
        assert stat.S_IMODE(os.stat(tmp_path / "results.json").st_mode) == 0o644  # not mkstemp's 0600
        os.chmod(tmp_path / "results.json", 0o640)
        atomic_write_text(str(tmp_path / "results.json"), "{}")
        assert stat.S_IMODE(os.stat(tmp_path / "results.json").st_mode) == 0o640
    finally:
        os.umask(umask)


def test_a_disk_full_during_torch_save_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint_last.pth"
    atomic_torch_save({"epoch": 1}, str(path))
    before = path.read_bytes()

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, fh: real_save(obj, FullDisk(fh)))
    with pytest.raises(FileWriteError) as info:
        atomic_torch_save({"epoch": 2, "w": torch.zeros(1000)}, str(path))
    assert info.value.path == str(path)
    assert str(info.value) == f"could not write {path}: [Errno 28] No space left on device"
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_last.pth"]


def test_an_unwritable_directory_names_the_file(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    with pytest.raises(FileWriteError, match=r"could not write .*results.json: \[Errno 13\] Permission denied"):
        atomic_write_json(str(tmp_path / "results.json"), {})


def test_a_failure_that_is_not_the_storage_is_raised_unchanged(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("not picklable")

    with pytest.raises(RuntimeError, match="not picklable") as info:
        atomic_torch_save({"x": Unpicklable()}, str(tmp_path / "ck.pth"))
    assert not isinstance(info.value, FileWriteError)
    assert list(tmp_path.iterdir()) == []


def test_temporaries_left_by_a_killed_write_are_removed(tmp_path):
    target = tmp_path / "checkpoint_last.pth"
    orphans = [tmp_path / ".checkpoint_last.pth.k3j_x1.tmp", tmp_path / ".checkpoint_last.pth.9ab.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"partial")
    keep = [tmp_path / ".model_best.pth.abc.tmp", tmp_path / "checkpoint_last.pth.tmp", target]
    for path in keep:
        path.write_bytes(b"x")
    removed = remove_stale_temporaries([str(target)])
    assert sorted(removed) == sorted(str(p) for p in orphans)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in orphans)
