"""``python -m reid.study misalignment [options]``: run (or resume) the misalignment study.

    python -m reid.study misalignment --out runs/study                 # laptop budget: pretrain, grid, aggregate
    python -m reid.study misalignment --out runs/study --print-commands   # unfinished cells, for a scheduler
    python -m reid.study misalignment --out runs/study --aggregate-only   # table + plot + JSON of finished cells
    python -m reid.study misalignment --out runs/study --aggregate-only --ablate-temporal   # + temporal weights zeroed
    python -m reid.study misalignment --budget full --out runs/study_gpu  # ResNet-50 grid on a GPU

Exit status: 0 when every cell finished, 1 when a cell failed or an option is bad.
"""
from __future__ import annotations

import argparse
import sys

import yaml

from .grid import BUDGETS, build_study, parse_networks


def _option(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key, yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reid.study", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
                                allow_abbrev=False)
    sub = p.add_subparsers(dest="study", required=True, metavar="STUDY")
    m = sub.add_parser("misalignment", allow_abbrev=False, help="networks x misalignment levels x seeds on the synthetic study preset")
    m.add_argument("--out", default="runs/study_misalignment", help="study directory (cells, pretraining, outputs)")
    m.add_argument("--budget", default="laptop", choices=sorted(BUDGETS),
                   help="laptop: ResNet-18 on CPU; full: ResNet-50 on a GPU [default: laptop]")
    m.add_argument("--networks", nargs="+", help="networks without backbone suffix [default: the budget's]")
    m.add_argument("--levels", nargs="+", type=float, help="misalignment levels in [0, 1] [default: 0 0.5 1]")
    m.add_argument("--seeds", nargs="+", type=int, help="training seeds [default: 0 1 2]")
    m.add_argument("--epochs", type=int, help="training epochs of every cell [default: the budget's]")
    m.add_argument("--milestones", nargs="*", type=int, help="lr x0.1 epochs of every cell")
    m.add_argument("--pretrain-epochs", type=int, help="epochs of the pretraining run")
    m.add_argument("--pretrain-milestones", nargs="*", type=int, help="lr x0.1 epochs of the pretraining run")
    m.add_argument("--iters-per-epoch", type=int, help="cap on steps per epoch (0 = a full pass)")
    m.add_argument("--threads", type=int, help="torch threads per cell")
    m.add_argument("--num-workers", type=int, help="data-loader workers per cell")
    m.add_argument("--amp", choices=("none", "bf16", "fp16"), help="precision [default: bf16 where native, else none]")
    m.add_argument("--height", type=int, help="network input height")
    m.add_argument("--width", type=int, help="network input width")
    m.add_argument("--num-identities", type=int, help="P identities per batch")
    m.add_argument("--num-instances", type=int, help="K clips per identity")
    m.add_argument("--dataset-option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="override a study-preset option for every set (e.g. num_test_ids=100)")
    m.add_argument("--pretrain-option", action="append", type=_option, default=[], metavar="KEY=VALUE",
                   help="override an option of the pretraining set only")
    m.add_argument("--print-commands", action="store_true", help="print the unfinished steps' commands and exit")
    m.add_argument("--aggregate-only", action="store_true", help="aggregate the finished cells and exit")
    m.add_argument("--ablate-temporal", action="store_true",
                   help="before aggregating, evaluate every finished temporal cell again with its temporal weights "
                        "zeroed (once per cell; reid/study/ablation.py)")
    m.add_argument("--report-dir", help="where the table/plot/JSON go [default: --out]")
    return p


def _budget(args):
    b = BUDGETS[args.budget]()
    changes = {k: getattr(args, k) for k in ("epochs", "pretrain_epochs", "iters_per_epoch", "threads", "num_workers",
                                              "amp", "height", "width", "num_identities", "num_instances")
               if getattr(args, k) is not None}
    for k in ("seeds", "milestones", "pretrain_milestones"):
        if getattr(args, k) is not None:
            changes[k] = tuple(getattr(args, k))
    if args.levels is not None:
        changes["levels"] = tuple(float(v) for v in args.levels)
    if args.networks is not None:
        changes["networks"] = parse_networks(args.networks)
    if args.dataset_option:
        changes["dataset_options"] = dict(args.dataset_option)
    if args.pretrain_option:
        changes["pretrain_options"] = dict(args.pretrain_option)
    for k in ("epochs", "pretrain_epochs", "threads", "height", "width", "num_identities", "num_instances"):
        if k in changes and changes[k] < (0 if k == "threads" else 1):
            raise ValueError(f"--{k.replace('_', '-')}: got {changes[k]}, expected a positive integer")
    return b.replace(**changes)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        study = build_study(args.out, _budget(args))
    except ValueError as exc:
        parser.error(str(exc))
    from .aggregate import write_outputs
    from .runner import run_study, unfinished_commands

    if args.print_commands:
        print("\n".join(unfinished_commands(study)) or "# every cell is finished")
        return 0
    rc = 0
    if not args.aggregate_only:
        try:
            rc = run_study(study)
        except (ValueError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.ablate_temporal:
        from .ablation import ablate_study

        ablate_study(study)
    paths = write_outputs(study, args.report_dir)
    with open(paths["table"]) as fh:
        print(fh.read())
    print("wrote " + ", ".join(paths.values()))
    return rc


if __name__ == "__main__":
    sys.exit(main())
