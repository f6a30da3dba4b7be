"""``python -m reid.test --checkpoint RUN/model_best.pth [--rerank] [--root DIR] ...``

Evaluates a checkpoint written by ``reid.train`` with the configuration stored in it (any
config flag given here overrides the stored value: ``--root`` for data on another machine,
``--rerank``, ``--test-batch-size``, ``--num-workers``, ``--mars-protocol``, ...). Prints the
table and writes ``<checkpoint stem>.results.json`` next to the checkpoint. Several
checkpoints (e.g. the 10 iLIDS-VID / PRID split models) are evaluated in turn, and the mean
over them is printed and written to ``--output`` (default: ``results_mean.json`` in their
common directory). Runs under torchrun too (features are extracted on all ranks).
Precision, layout, loader workers and allocator are not taken from the checkpoint: ``--amp`` /
``--memory-format`` / ``--num-workers`` / ``--malloc`` default
to ``auto``, the policy for the machine the test runs on (``reid.engine.precision``).
"""
from __future__ import annotations

import dataclasses
import os
import sys

from .engine import distributed as du
from .engine.allocator import configure_allocator
from .engine.workers import describe_workers
from .engine.checkpoint import CheckpointError, load_checkpoint, load_model_weights
from .engine.cli import run_command
from .engine.config import MACHINE_DEFAULTS, ConfigError, build_parser, check_device, config_from_dict, load_config
from .engine.evaluator import evaluate, format_results, mean_over_splits, write_json
from .engine.precision import resolve_policy
from .engine.reporting import setup_logger
from .engine.builders import build_data, build_network
from .plot import plot_results_file


def _extra(parser):
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="PATH",
                        help="checkpoint(s) written by reid.train (model_best.pth or checkpoint_last.pth)")
    parser.add_argument("--output", default=None, metavar="JSON",
                        help="where to write the mean over several checkpoints")


def evaluate_checkpoint(path: str, args, info: du.DistInfo) -> dict:
    ckpt = load_checkpoint(path)
    try:
        base = config_from_dict(ckpt["config"], source=path)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path} holds a config this version cannot read: {exc}") from exc
    # the backbone's ImageNet file is irrelevant at test time: the weights come from the checkpoint;
    # the training machine's device is too (a GPU-trained checkpoint is tested on CPU unless --device),
    # and so are its precision and layout: they are chosen for THIS machine
    base = dataclasses.replace(base, pretrained=None, resume=None, amp="auto", memory_format="auto", **MACHINE_DEFAULTS)
    cfg = load_config(args, base=base)
    allocator = configure_allocator(cfg.malloc)
    ckpt_dir = os.path.dirname(os.path.abspath(path))
    log = setup_logger(ckpt_dir, info.rank, filename="test_log.txt")
    ds = build_data(cfg, int(cfg.split_id), info)
    model = build_network(cfg, int(ckpt["num_classes"]), pretrained=None)
    load_model_weights(model, ckpt["model"], f"checkpoint {path}", f"{cfg.arch} with {ckpt['num_classes']} classes")
    model.to(info.device)
    if info.is_main:
        log.info(f"{path}: {cfg.arch}, epoch {ckpt['epoch']}, {cfg.dataset} split {cfg.split_id}")
        log.info(ds.summary() if hasattr(ds, "summary") else cfg.dataset)
        policy = resolve_policy(cfg.amp, cfg.memory_format, info.device)
        log.info(f"{policy.describe()} | {describe_workers(cfg.num_workers, info.device)} | {allocator}")
    result = evaluate(model, ds, cfg, info.device)
    if info.is_main:
        result.update(checkpoint=os.path.abspath(path), epoch=int(ckpt["epoch"]), arch=cfg.arch)
        stem = os.path.splitext(os.path.basename(path))[0]
        write_json(result, os.path.join(ckpt_dir, f"{stem}.results.json"))
        log.info(format_results(result, title=f"Test ({os.path.basename(path)}, epoch {ckpt['epoch']})"))
        log.info(f"CMC plot: {plot_results_file(os.path.join(ckpt_dir, f'{stem}.results.json'))}")
    return result


def evaluate_checkpoints(args) -> list:
    check_device(getattr(args, "device", "auto"))
    info = du.init_distributed(getattr(args, "device", "auto"))
    results = [evaluate_checkpoint(p, args, info) for p in args.checkpoint]
    if len(results) > 1 and info.is_main:
        mean = mean_over_splits(results)
        mean["checkpoints"] = [r["checkpoint"] for r in results]
        out = args.output or os.path.join(
            os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in args.checkpoint]), "results_mean.json"
        )
        write_json(mean, out)
        print(format_results(mean, title=f"Mean over {len(results)} checkpoints"))
        print(f"written: {out}, {plot_results_file(out)}")
    return results


def main(argv=None) -> int:
    parser = build_parser("Evaluate reid.train checkpoints with the video re-ID protocol.", extra=_extra, prog="python -m reid.test")
    args = parser.parse_args(argv)
    return run_command(lambda: evaluate_checkpoints(args))


if __name__ == "__main__":
    sys.exit(main())
