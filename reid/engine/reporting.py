"""What a user sees: a logger writing to the console (through tqdm, so progress bars stay
intact) and to ``<output_dir>/log.txt``, plus a TensorBoard writer. Only rank 0 reports;
other ranks log warnings and errors to the console only.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

__all__ = ["setup_logger", "TensorBoard"]

LOGGER_NAME = "reid"


class _TqdmHandler(logging.StreamHandler):
    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stdout)
            self.flush()
        except Exception:  # logging must never take the run down
            self.handleError(record)


def setup_logger(output_dir: Optional[str], rank: int = 0, filename: str = "log.txt") -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    console = _TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.addHandler(console)
    if rank == 0 and output_dir:
        os.makedirs(output_dir, exist_ok=True)
        fh = logging.FileHandler(os.path.join(output_dir, filename), delay=True)  # no empty file before a line
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(fh)
    return logger


class TensorBoard:
    """SummaryWriter on rank 0 (events under ``<output_dir>/tensorboard``); no-op elsewhere."""

    def __init__(self, output_dir: Optional[str], enabled: bool):
        self.writer = None
        if enabled and output_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"))

    def scalars(self, step: int, **values) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, float(v), step)

    def text(self, tag: str, text: str) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
