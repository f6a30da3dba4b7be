"""Parameters and FLOPs of every architecture (``python -m reid.models``).

Parameters exclude the classifier (as in the paper). FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` on one eval-mode forward of a single clip: every
convolution and matrix product, APM included (the fused ops register their own FLOP formulas;
the reference backend is counted through its matmuls). The counter counts a multiply-add as 2
FLOPs; the paper's "GFLOPs" are multiply-accumulates from a tool that skips matrix products,
so the table prints our FLOPs, our MACs (= FLOPs / 2) and the paper's figure side by side.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from .factory import ALIASES, ARCHITECTURES, BACKBONES, build_model, count_parameters
from .video_resnet import apm_modules

__all__ = ["PAPER_RESNET50", "SummaryRow", "summarize", "count_flops", "format_table", "main"]

#: Tables 1 and 2 of the paper (ResNet-50, one 4-frame 256x128 clip): (params in M, "GFLOPs").
PAPER_RESNET50: dict[str, tuple[float, float]] = {
    "c2d": (23.51, 16.35),
    "i3d": (27.64, 19.37),
    "ap_i3d": (27.68, 19.48),
    "p3d_a": (24.20, 16.85),
    "p3d_b": (24.20, 16.85),
    "p3d_c": (24.20, 16.85),
    "ap_p3d_a": (24.24, 16.90),
    "ap_p3d_b": (24.24, 16.96),
    "ap_p3d_c": (24.24, 16.90),
    "nl": (30.87, 21.74),
    "nl_p3d_c": (31.56, 22.17),
    "nl_ap3d": (31.60, 22.29),
    "ca_nl": (32.75, 21.92),  # ours: 32.71 (ap3d_kernels/modules/contrastive_nonlocal.py says why)
    "deform3d": (27.75, 19.53),
    "cnn_lstm": (28.76, 16.30),
}


def _lstm_layer_flops(input_shape, w_ih_shape, w_hh_shape, *, batch_first=False, **_) -> int:
    """FLOPs of one LSTM layer: the input and recurrent products of every step (gates' element-wise
    work is not counted, like the other non-matmul work)."""
    steps = input_shape[0] * input_shape[1] if len(input_shape) == 3 else input_shape[0]
    return 2 * steps * (w_ih_shape[0] * w_ih_shape[1] + w_hh_shape[0] * w_hh_shape[1])


def _mkldnn_rnn_layer_flops(input, weight0, weight1, *args, out_shape=None, **kwargs) -> int:
    return _lstm_layer_flops(input, weight0, weight1)


# PyTorch's flop counter has no formula for the fused LSTM kernel the CPU runs
# (aten.mkldnn_rnn_layer); on "meta" the LSTM decomposes into counted matmuls. cuDNN's LSTM
# (--device cuda) is not counted: 0.02 of CNN+LSTM's 16.23 GMACs.
_RNN_FLOPS = {torch.ops.aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flops}


@dataclass
class SummaryRow:
    architecture: str
    label: str
    backbone: str
    params: int  # classifier excluded
    flops: Optional[int]  # FlopCounterMode total for one clip
    apm_backend: Optional[str]  # backend APM ran on ("-" when the model has no APM)
    paper_params: Optional[float]
    paper_gflops: Optional[float]

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gflops(self) -> Optional[float]:
        return None if self.flops is None else self.flops / 1e9

    @property
    def gmacs(self) -> Optional[float]:
        return None if self.flops is None else self.flops / 2e9


def count_flops(model: torch.nn.Module, clip: torch.Tensor) -> int:
    """FLOPs of one eval-mode forward (no classifier: eval returns the neck features)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_RNN_FLOPS) as counter:
            model(clip)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def _resolved_backend(model, device) -> str:
    from ap3d_kernels.functional import available_backends

    apms = apm_modules(model)
    if not apms:
        return "-"
    resolved = {available_backends(device)[0] if m.backend == "auto" else m.backend for m in apms}
    return "+".join(sorted(resolved))


def summarize(
    architectures: Optional[Sequence[str]] = None,
    backbone: str = "resnet50",
    *,
    frames: int = 4,
    height: int = 256,
    width: int = 128,
    flops: bool = True,
    apm_backend: str = "auto",
    device: str = "cpu",
) -> list[SummaryRow]:
    """One row per architecture (default: all of ``ARCHITECTURES``)."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {backbone!r}")
    names = list(ARCHITECTURES) if architectures is None else list(architectures)
    device = torch.device(device)
    rows = []
    for name in names:
        with device:  # built in place: on "meta" (shapes only) construction and counting are instant
            model = build_model(f"{name}_{backbone}", num_classes=1, apm_backend=apm_backend)
        arch = ARCHITECTURES[model.architecture]
        total = None
        backend = _resolved_backend(model, device)
        if flops:
            clip = torch.randn(1, 3, frames, height, width, device=device)
            with warnings.catch_warnings():  # the "auto falls back to the reference" notice: shown in the table
                warnings.simplefilter("ignore", RuntimeWarning)
                total = count_flops(model, clip)
        paper = PAPER_RESNET50.get(arch.name) if backbone == "resnet50" else None
        rows.append(
            SummaryRow(
                architecture=f"{arch.name}_{backbone}",
                label=arch.label,
                backbone=backbone,
                params=count_parameters(model),
                flops=total,
                apm_backend=backend,
                paper_params=None if paper is None else paper[0],
                paper_gflops=None if paper is None else paper[1],
            )
        )
    return rows


def format_table(rows: Sequence[SummaryRow], *, markdown: bool = False) -> str:
    header = ["model", "paper name", "params (M)", "paper params", "GFLOPs", "GMACs", "paper GFLOPs", "APM backend"]

    def fmt(v, spec=".2f"):
        return "-" if v is None else format(v, spec)

    body = [
        [r.architecture, r.label, fmt(r.params_m), fmt(r.paper_params), fmt(r.gflops), fmt(r.gmacs), fmt(r.paper_gflops), r.apm_backend or "-"]
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 5 + ["---"]) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in body]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reid.models",
        allow_abbrev=False,  # a misspelt flag is an error, never a prefix match of another one
        description="Parameters (M, classifier excluded) and FLOPs of one clip for every AP3D-paper architecture.",
    )
    parser.add_argument("--backbone", choices=[*BACKBONES, "all"], default="resnet50")
    parser.add_argument("--models", nargs="+", choices=[*ARCHITECTURES, *ALIASES], help="default: all architectures")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--apm-backend", default="auto", choices=["auto", "reference", "cpu", "triton"])
    parser.add_argument(
        "--device",
        default="cpu",
        help="where the counting forward runs; 'meta' counts from shapes alone (seconds, APM via the reference)",
    )
    parser.add_argument("--no-flops", action="store_true", help="parameters only (fast)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)

    backbones = list(BACKBONES) if args.backbone == "all" else [args.backbone]
    start = time.perf_counter()
    rows = []
    for backbone in backbones:
        rows += summarize(
            args.models,
            backbone,
            frames=args.frames,
            height=args.height,
            width=args.width,
            flops=not args.no_flops,
            apm_backend=args.apm_backend,
            device=args.device,
        )
    print(format_table(rows, markdown=args.markdown))
    note = (
        f"\nOne clip of {args.frames} frames at {args.height}x{args.width}, batch 1, eval mode; FLOPs from "
        f"torch.utils.flop_counter (multiply-add = 2 FLOPs, matmuls and APM included); GMACs = FLOPs / 2. "
        f"The paper's GFLOPs are MACs from a counter that skips matrix products (ResNet-50 only). "
        f"({time.perf_counter() - start:.1f} s)"
    )
    print(note, file=sys.stdout)
    return 0
