"""Damaged weights files, made the way they happen: a flipped byte inside a tensor, a truncated
copy, and a pickle payload that would run code if it were ever unpickled without weights_only."""
from __future__ import annotations

import os
import struct
import zipfile

import torch


def flip_byte_in_largest_tensor(path: str, offset: int = 100) -> str:
    """Invert one byte inside the largest tensor record of a torch.save archive, in place.

    The zip structure stays valid (torch.load still opens the file); only the record's stored
    CRC32 no longer matches its bytes. Returns the record's name.
    """
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename and not i.filename.endswith(".pkl")),
                   key=lambda i: i.file_size)
    with open(path, "r+b") as fh:
        fh.seek(info.header_offset + 26)  # local file header: name and extra-field lengths
        name_len, extra_len = struct.unpack("<HH", fh.read(4))
        where = info.header_offset + 30 + name_len + extra_len + min(offset, info.file_size - 1)
        fh.seek(where)
        byte = fh.read(1)[0]
        fh.seek(where)
        fh.write(bytes([byte ^ 0xFF]))
    return info.filename


def truncate(path: str, fraction: float = 0.5) -> None:
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: int(len(data) * fraction)])


class _Payload:
    """Unpickling this creates `marker` (harmless stand-in for arbitrary code)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_pickle_payload(path: str, marker: str) -> None:
    """A .pth whose unpickling (without weights_only) would create the file `marker`."""
    torch.save({"conv1.weight": torch.zeros(1), "extra": _Payload(marker)}, path)
    assert not os.path.exists(marker)
