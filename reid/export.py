"""Export a trained network for deployment: ``torch.export`` (.pt2) or ONNX, checked against eager.

    python -m reid.export --checkpoint runs/ap3d_synthetic/model_best.pth --format export   # -> model_best.pt2
    python -m reid.export --checkpoint runs/ap3d_synthetic/model_best.pth --format onnx     # -> model_best.onnx

The exported network is the inference network: clips ``[B, 3, T, H, W]`` (ImageNet-normalised
frames at the run's ``height x width``) -> per-frame features ``[B, T, D]``; a tracklet's feature
is the mean over its frames, L2-normalised (what ``reid.test`` and ``reid.extract`` do). The
batch size ``B`` and the clip length ``T`` are dynamic in both formats.

* ``export``: ``torch.export`` with the fused APM kept as one custom-op node per APM (the
  operator registered by ``ap3d_kernels``), saved as ``.pt2``. Load it with
  :func:`load_exported`, which registers the operator first.
* ``onnx``: ONNX has no APM operator, so APM is exported in its reference formulation
  (``backend="reference"``: matrix products, softmax, sigmoid), i.e. standard ONNX operators only.

Both are reloaded (``torch.export.load`` / onnxruntime) and compared with the eager network (fused
APM) at the example shape, at batch size 1, and at another batch size and twice the clip length.
The check passes when ``max |exported - eager| <= atol * max(1, max |eager|)`` (``--atol``,
default 1e-4). The report gives the maximum difference at each shape and the file size; the exit
status is 1 if a check fails.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from typing import Callable

import numpy as np
import torch

__all__ = ["export_program", "export_onnx", "load_exported", "check_against_eager", "custom_op_nodes", "main"]

DEFAULT_ATOL = 1e-4


def _dynamic_shapes():
    return {"clips": {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("frames", min=1)}}


def check_shapes(batch: int, frames: int, height: int, width: int) -> list[tuple[int, ...]]:
    """The example shape, batch size 1, and another batch size with twice the clip length."""
    return [(batch, 3, frames, height, width), (1, 3, frames, height, width), (batch + 1, 3, 2 * frames, height, width)]


def custom_op_nodes(graph: torch.fx.Graph) -> Counter:
    """Operators of the graph outside ATen/prims (i.e. registered by a library), with their counts."""
    found = Counter()
    for node in graph.nodes:
        target = node.target
        if node.op == "call_function" and isinstance(target, torch._ops.OpOverload):
            if target.namespace not in ("aten", "prims"):
                found[f"{target.namespace}::{target._opname}"] += 1
    return found


def check_against_eager(model: torch.nn.Module, run: Callable[[torch.Tensor], np.ndarray], shapes, atol: float,
                        seed: int = 0) -> list[dict]:
    """Max |run(x) - model(x)| on random clips of each shape; ``ok`` against the scaled tolerance."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for shape in shapes:
        x = torch.randn(shape, generator=gen)
        with torch.no_grad():
            eager = model(x).numpy()
        got = run(x)
        if got.shape != eager.shape:
            raise RuntimeError(f"exported network returned shape {got.shape} for input {shape}, eager {eager.shape}")
        diff = float(np.abs(got - eager).max())
        scale = max(1.0, float(np.abs(eager).max()))
        rows.append({"shape": list(shape), "max_abs_diff": diff, "max_abs_eager": float(np.abs(eager).max()),
                     "ok": diff <= atol * scale})
    return rows


def load_exported(path: str) -> torch.nn.Module:
    """A ``.pt2`` written by ``reid.export --format export``, as a callable module.

    The graph calls the fused APM operator, which must be registered before loading:
    this loads ``ap3d_kernels``' CPU kernels first.
    """
    import ap3d_kernels

    if "cpu" not in ap3d_kernels.available_backends("cpu"):
        raise RuntimeError("the .pt2 calls the fused CPU APM operator, but ap3d_kernels' CPU kernels are not "
                           "available in this environment (see ap3d_kernels.available_backends('cpu'))")
    return torch.export.load(path).module()


def export_program(model: torch.nn.Module, example: torch.Tensor, out: str) -> dict:
    """torch.export with the fused APM as custom-op nodes; saved to ``out`` (.pt2)."""
    import ap3d_kernels
    from reid.models import apm_modules

    n_apm = len(apm_modules(model))
    if n_apm and "cpu" not in ap3d_kernels.available_backends("cpu"):
        raise RuntimeError("--format export keeps APM as the fused CPU operator, which is not available here "
                           "(ap3d_kernels.available_backends('cpu') has no 'cpu'); use --format onnx, which needs none")
    program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes())
    ops = custom_op_nodes(program.graph)
    if sum(ops.values()) != n_apm:
        raise RuntimeError(f"expected one fused APM node per APM module ({n_apm}), the exported graph has {dict(ops)}")
    torch.export.save(program, out)
    return {"custom_ops": dict(ops)}


def export_onnx(model: torch.nn.Module, example: torch.Tensor, out: str) -> dict:
    """ONNX with APM in its reference formulation (standard operators only); saved to ``out``."""
    import onnx

    from reid.models import apm_modules

    saved = [m.backend for m in apm_modules(model)]
    try:
        for m in apm_modules(model):
            m.backend = "reference"
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=_dynamic_shapes(),
                                    input_names=["clips"], output_names=["features"], verbose=False)
    finally:
        for m, backend in zip(apm_modules(model), saved):
            m.backend = backend
    program.save(out)
    proto = onnx.load(out, load_external_data=False)
    domains = Counter(node.domain or "ai.onnx" for node in proto.graph.node)
    if set(domains) - {"ai.onnx"}:
        raise RuntimeError(f"the ONNX graph uses non-standard operator domains: {dict(domains)}")
    return {"opset": int(next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))),
            "nodes": sum(domains.values())}


def _run_onnx(path: str) -> Callable[[torch.Tensor], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"clips": x.numpy()})[0]


def export_checkpoint(checkpoint: str, fmt: str, out: str, batch: int = 2, frames: int = 0,
                      atol: float = DEFAULT_ATOL) -> dict:
    """Export, reload, compare; returns the report (``ok`` is False if a comparison failed)."""
    from reid.inference import load_trained_model

    loaded = load_trained_model(checkpoint, "cpu")
    cfg, model = loaded.cfg, loaded.model
    frames = frames or cfg.seq_len
    if batch < 1 or frames < 1:
        raise ValueError(f"--batch/--frames: got {batch}/{frames}, expected >= 1")
    example = torch.randn(batch, 3, frames, cfg.height, cfg.width, generator=torch.Generator().manual_seed(0))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    t0 = time.time()
    if fmt == "export":
        info = export_program(model, example, out)
        reloaded = load_exported(out)
        run = lambda x: reloaded(x).detach().numpy()  # noqa: E731
    else:
        info = export_onnx(model, example, out)
        run = _run_onnx(out)
    export_s = time.time() - t0
    rows = check_against_eager(model, run, check_shapes(batch, frames, cfg.height, cfg.width), atol)
    return {"format": fmt, "out": out, "size_bytes": os.path.getsize(out), "arch": cfg.arch,
            "input": f"[B, 3, T, {cfg.height}, {cfg.width}] (B, T dynamic)", "output": "[B, T, D] per-frame features",
            "export_s": round(export_s, 1), "atol": atol, "checks": rows, "ok": all(r["ok"] for r in rows), **info}


def format_report(rep: dict) -> str:
    lines = [f"{rep['format']}: {rep['out']} ({rep['size_bytes'] / 2**20:.1f} MiB, {rep['arch']}, "
             f"input {rep['input']}, output {rep['output']}, {rep['export_s']}s)"]
    if "custom_ops" in rep:
        lines.append("  APM kept as custom-op nodes: " + ", ".join(f"{k} x{v}" for k, v in rep["custom_ops"].items()))
    if "opset" in rep:
        lines.append(f"  ONNX opset {rep['opset']}, {rep['nodes']} nodes, standard operators only (APM as reference ops)")
    for r in rep["checks"]:
        lines.append(f"  reloaded vs eager at {tuple(r['shape'])}: max |diff| {r['max_abs_diff']:.2e} "
                     f"(max |eager| {r['max_abs_eager']:.3f}) {'ok' if r['ok'] else 'FAILED'}")
    lines.append(f"  tolerance: max |diff| <= {rep['atol']:g} x max(1, max |eager|) -> {'passed' if rep['ok'] else 'FAILED'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from reid.engine.checkpoint import CheckpointError
    from reid.engine.config import ConfigError

    p = argparse.ArgumentParser(prog="python -m reid.export", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--checkpoint", required=True, metavar="PTH", help="checkpoint written by reid.train")
    p.add_argument("--format", required=True, choices=("export", "onnx"), help="export: torch.export .pt2; onnx: ONNX")
    p.add_argument("--out", default=None, metavar="FILE", help="[default: the checkpoint's path with .pt2 / .onnx]")
    p.add_argument("--batch", type=int, default=2, help="batch size of the example input [2]")
    p.add_argument("--frames", type=int, default=0, help="clip length of the example input [the run's seq_len]")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help=f"tolerance, scaled by max(1, max |eager|) [{DEFAULT_ATOL}]")
    args = p.parse_args(argv)
    out = args.out or os.path.splitext(args.checkpoint)[0] + (".pt2" if args.format == "export" else ".onnx")
    try:
        report = export_checkpoint(args.checkpoint, args.format, out, args.batch, args.frames, args.atol)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
