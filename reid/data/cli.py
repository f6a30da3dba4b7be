"""Command-line options shared by ``python -m reid.data`` and ``python -m reid.data.contact_sheet``.

Flags that also exist in ``reid.train`` / ``reid.test`` have the same names there
(``--dataset``, ``--root``, ``--split-id``, ``--mars-protocol``, ``--num-workers``). The older
spellings ``--protocol`` and ``--workers`` still work, with a deprecation warning.
"""
from __future__ import annotations

import argparse
import sys

from .datasets import DATASETS

__all__ = ["add_dataset_arguments", "dataset_options"]

_SYNTHETIC_FLAGS = (("num_train_ids", int), ("num_test_ids", int), ("num_cameras", int), ("min_frames", int),
                    ("max_frames", int), ("height", int), ("width", int), ("misalignment", float), ("seed", int),
                    ("occlusion_prob", float), ("pose_amplitude", float), ("palette", int))


class _DeprecatedAlias(argparse.Action):
    """A hidden old spelling of a flag: stores into the new flag's destination, with a warning."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated, use {self.new} (the name reid.train uses)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="synthetic", choices=sorted(DATASETS), help="dataset name (default synthetic)")
    p.add_argument("--root", default=None, help="dataset root (synthetic: default is the per-user cache)")
    p.add_argument("--split-id", type=int, default=0, help="split for iLIDS-VID / PRID2011 (0..9)")
    protocols = ("release", "skip_unmatched")
    p.add_argument("--mars-protocol", choices=protocols, default=None, help="MARS gallery protocol")
    p.add_argument("--protocol", choices=protocols, dest="mars_protocol", action=_DeprecatedAlias, new="--mars-protocol")
    p.add_argument("--dense", action=argparse.BooleanOptionalAction, default=None,
                   help="cut training tracklets into 64-frame chunks (default: on for duke/ilidsvid)")
    p.add_argument("--num-workers", type=int, default=None, help="processes generating the synthetic set")
    p.add_argument("--workers", type=int, dest="num_workers", action=_DeprecatedAlias, new="--num-workers")
    g = p.add_argument_group("synthetic options")
    for name, typ in _SYNTHETIC_FLAGS:
        g.add_argument("--" + name.replace("_", "-"), type=typ, default=None)


def dataset_options(args: argparse.Namespace) -> dict:
    """The ``build_dataset`` options the parsed flags ask for."""
    opts = {}
    if args.mars_protocol is not None:
        opts["protocol"] = args.mars_protocol
    if args.dense is not None:
        opts["dense"] = args.dense
    if args.dataset == "synthetic":
        if args.num_workers is not None:
            opts["workers"] = args.num_workers
        opts.update({n: getattr(args, n) for n, _ in _SYNTHETIC_FLAGS if getattr(args, n) is not None})
    else:
        given = [n for n, _ in _SYNTHETIC_FLAGS if getattr(args, n) is not None]
        if given:
            raise SystemExit(f"options {given} apply to --dataset synthetic only")
    return opts
