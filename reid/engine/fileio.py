"""Atomic file writes: the one writer behind every file a run leaves (checkpoints, results, config, logs).

A write goes to a temporary file ``.<name>.<random>.tmp`` in the target's directory, is
flushed and fsync'ed, then renamed over the target with ``os.replace`` (atomic on POSIX), and
the directory is fsync'ed so the rename survives a power cut. A reader therefore sees either
the old file or the complete new one, never a half-written file. When the write fails the
temporary file is removed and the target is untouched; a failure of the storage itself (disk
full, read-only or immutable directory, quota) is raised as :class:`FileWriteError`, which
names the file (the step log, which is appended to, raises it too). A process killed mid-write can leave a temporary file behind:
:func:`remove_stale_temporaries` deletes those on the next start.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
from typing import Any, BinaryIO, Callable, Iterable

__all__ = [
    "FileWriteError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "temporary_pattern",
    "remove_stale_temporaries",
    "writing",
]


class FileWriteError(OSError):
    """The storage refused a write of ``path`` (an atomic write leaves the previous version intact)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"could not write {path}: {reason}")
        self.path = path
        self.reason = reason


@contextlib.contextmanager
def writing(path: str):
    """Re-raise an OSError of the block as a :class:`FileWriteError` naming ``path``."""
    try:
        yield
    except FileWriteError:
        raise
    except OSError as exc:
        raise FileWriteError(path, str(exc)) from exc


def _storage_error(exc: BaseException):
    """The OSError behind ``exc`` (torch.save reports a failed write as a RuntimeError whose
    context is the OSError), or None when ``exc`` is not a storage failure."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support it; the rename itself already happened
        pass
    finally:
        os.close(fd)


def _file_mode(path: str) -> int:
    """The target's permissions if it exists, else what ``open()`` would give (0666 less umask)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def temporary_pattern(path: str) -> str:
    """Glob pattern of the temporary files a write of ``path`` uses."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(glob.escape(directory), "." + glob.escape(name) + ".*.tmp")


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(fh)`` on a temporary binary file, then move it to ``path`` atomically."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
        os.fchmod(fd, _file_mode(path))  # mkstemp's 0600 would make results private to their writer
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass
        cause = _storage_error(exc) if isinstance(exc, Exception) else None
        if cause is not None and not isinstance(exc, FileWriteError):
            raise FileWriteError(path, str(cause)) from exc
        raise
    _fsync_directory(directory)


def atomic_write_bytes(path: str, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)``, atomically."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))


def remove_stale_temporaries(paths: Iterable[str]) -> list[str]:
    """Delete the temporary files left by writes of ``paths`` that were killed; returns them."""
    removed = []
    for path in paths:
        for tmp in sorted(glob.glob(temporary_pattern(path))):
            try:
                os.unlink(tmp)
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed
