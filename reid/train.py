"""``python -m reid.train [--config configs/mars.yaml] [--flag value ...]``

With no arguments: a small AP3D (ResNet-18 backbone, 128x64 frames) on the synthetic default,
on CPU, then the evaluation table. Under ``torchrun --nproc_per_node N -m reid.train ...`` the
same command trains with DistributedDataParallel. Exit status: 0 on success, 1 on a bad
configuration, checkpoint or data, or a file that could not be written (the message says what
is intact and how to continue), 2 when the loss became non-finite.
"""
from __future__ import annotations

import logging
import sys

from .engine import distributed as du
from .engine.cli import run_command
from .engine.config import ConfigError, build_parser, load_config
from .engine.trainer import train


def main(argv=None) -> int:
    parser = build_parser("Train a video re-ID network (AP3D family) and evaluate it.", prog="python -m reid.train")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args)
    except ConfigError as exc:
        parser.error(str(exc))
    return run_command(lambda: _train_and_plot(cfg))


def _train_and_plot(cfg) -> None:
    info = du.init_distributed(cfg.device)
    train(cfg, info)
    if info.is_main:  # the pictures of the results (reid.plot), next to results.json
        from .plot import write_run_plots

        logging.getLogger("reid").info("plots: " + ", ".join(write_run_plots(cfg.output_dir)))


if __name__ == "__main__":
    sys.exit(main())
