"""``python -m reid.train [--config configs/mars.yaml] [--flag value ...]``

With no arguments: a small AP3D (ResNet-18 backbone, 128x64 frames) on the synthetic default,
on CPU, then the evaluation table. Under ``torchrun --nproc_per_node N -m reid.train ...`` the
same command trains with DistributedDataParallel. Exit status: 0 on success, 1 on a bad
configuration or checkpoint, 2 when the loss became non-finite.
"""
from __future__ import annotations

import logging
import sys

from .engine import distributed as du
from .engine.checkpoint import CheckpointError
from .engine.config import ConfigError, build_parser, load_config
from .engine.trainer import NonFiniteLossError, train


def main(argv=None) -> int:
    parser = build_parser("Train a video re-ID network (AP3D family) and evaluate it.", prog="python -m reid.train")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args)
    except ConfigError as exc:
        parser.error(str(exc))
    info = None
    try:
        info = du.init_distributed(cfg.device)
        train(cfg, info)
        if info.is_main:
            from .plot import write_run_plots

            logging.getLogger("reid").info("plots: " + ", ".join(write_run_plots(cfg.output_dir)))
        return 0
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as exc:
        # user errors (bad value, missing or malformed data, unreadable checkpoint): the message, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        du.cleanup()


if __name__ == "__main__":
    sys.exit(main())
