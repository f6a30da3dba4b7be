"""Opening ``.pth`` files (checkpoints, ImageNet weights): integrity first, then a safe load.

``torch.save`` writes a zip archive with a CRC32 per record, but ``torch.load`` never checks
those CRCs: a flipped byte inside a tensor loads without a word and silently changes results.
:func:`load_weights_file` therefore reads every record of the archive and checks its CRC32
before loading, then loads with ``weights_only=True`` (no pickled code runs), and turns every
failure into one :class:`WeightsFileError` naming the file and what is wrong with it.

Limits: files in the pre-1.6 (non-zip) ``torch.save`` format carry no checksums and are loaded
unverified; records written with ``torch.serialization.set_crc32_options(False)`` store a CRC
of 0 and are skipped (nothing to compare against).
"""
from __future__ import annotations

import os
import struct
import zipfile
import zlib
from typing import Any

import torch

__all__ = ["WeightsFileError", "verify_archive", "load_weights_file"]

_CHUNK = 1 << 20


class WeightsFileError(ValueError):
    """A weights file is corrupted, truncated, or not a file of tensors; nothing was loaded."""


def verify_archive(path: str, what: str = "weights file") -> int:
    """Check the CRC32 of every record of the zip archive at ``path``; returns how many were checked.

    A file that is not a zip archive (legacy format, or not a PyTorch file at all) returns 0 and
    is left to ``torch.load`` to accept or refuse. Raises :class:`WeightsFileError` on a mismatch.
    """
    if not zipfile.is_zipfile(path):
        return 0
    checked = 0
    name = "<central directory>"
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename
                if info.CRC == 0 and info.file_size:  # written with CRC32 disabled: cannot be verified
                    continue
                with archive.open(info) as fh:  # raises BadZipFile at the end on a CRC mismatch
                    while fh.read(_CHUNK):
                        pass
                checked += 1
    except (zipfile.BadZipFile, zlib.error, EOFError, struct.error, NotImplementedError, ValueError) as exc:
        raise WeightsFileError(
            f"{what} {path} is corrupted: record {name!r} fails its integrity check ({exc}). Its bytes "
            f"changed after it was written (disk, copy or transfer error); nothing was loaded. "
            f"Restore the file from a good copy."
        ) from exc
    return checked


def _reason(exc: BaseException) -> str:
    """The informative part of a torch.load error, without its generic preamble and advice
    (which suggests loading with weights_only=False: the very thing not to do with such a file)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:  # the weights_only unpickler names what it refused: "Unsupported global: ..."
        at = line.lower().find("unsupported")
        if at >= 0:
            return f"{type(exc).__name__}: {line[at:].split('. ')[0].rstrip('.')}"
    generic = ("Weights only load failed", "Check the documentation", "Please file an issue", "In PyTorch 2.6")
    useful = [line for line in lines if not line.startswith(generic)]
    text = (useful or lines or [""])[0].split(". ")[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_weights_file(path: str, what: str = "weights file") -> Any:
    """Verify ``path`` (:func:`verify_archive`), then ``torch.load(..., weights_only=True)`` on CPU."""
    path = os.fspath(path)
    verify_archive(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError is not a RuntimeError; zip errors are
        if "Weights only load failed" in str(exc):
            raise WeightsFileError(
                f"{what} {path} is not a valid weights file: it holds pickled objects other than tensors "
                f"and plain containers, which are refused so that no code in the file can run ({_reason(exc)})"
            ) from exc
        raise WeightsFileError(
            f"cannot read {what} {path}: the file is corrupted or truncated, or is not a PyTorch weights "
            f"file ({_reason(exc)})"
        ) from exc
