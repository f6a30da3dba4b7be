#!/usr/bin/env python3
"""Does ``torch.compile`` speed up training? A few training steps, eager vs compiled.

    python bench/bench_compile.py                      # ap3d_resnet18, the default training shape, CPU
    python bench/bench_compile.py --steps 6 --mode max-autotune-no-cudagraphs

One training step is what ``reid.train`` does per batch: forward of a batch of P x K clips
(default 8 x 4 clips of 4 x 128 x 64, the default config), cross-entropy + triplet loss,
backward, Adam step. The same model and data (fixed random clips) are run eagerly and through
``torch.compile(model)``; the compiled version's first step includes the compilation, which is
reported separately (timed with an empty inductor cache unless ``--warm-cache``). After
``--warmup`` steps of each, eager and compiled steps alternate (``--steps`` of each) so that the
load of a shared machine weighs on both alike; the medians are compared.
Results are printed and written as JSON to ``--out`` (default bench/results/compile_<device>.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ap3d_kernels  # noqa: E402
from reid.losses import ReIDLoss  # noqa: E402
from reid.models import build_model  # noqa: E402


def make_step(model, criterion, optimizer):
    def step(clips, pids):
        logits, feats = model(clips)
        loss, _ = criterion(logits.float(), feats.float(), pids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def build(args, compiled: bool):
    torch.manual_seed(0)  # the same initial weights for both
    num_classes = args.num_identities * 4
    model = build_model(args.arch, num_classes=num_classes).to(args.device).train()
    criterion = ReIDLoss(num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=5e-4)
    net = torch.compile(model, mode=args.mode) if compiled else model
    return make_step(net, criterion, optimizer)


def run(args) -> dict:
    """Compile (timed), warm both up, then alternate eager and compiled steps so that the load of a
    shared machine weighs on both alike; medians of each."""
    device = torch.device(args.device)
    batch = args.num_identities * args.num_instances
    gen = torch.Generator().manual_seed(0)
    clips = torch.randn(batch, 3, args.seq_len, args.height, args.width, generator=gen).to(device)
    pids = torch.arange(args.num_identities, device=device).repeat_interleave(args.num_instances)
    # load the fused kernels outside the traced region (a fresh process would otherwise trace the load)
    ap3d_kernels.available_backends(device)
    eager, compiled = build(args, False), build(args, True)
    t0 = time.perf_counter()
    loss_c = compiled(clips, pids)
    first = time.perf_counter() - t0
    loss_e = eager(clips, pids)
    for _ in range(args.warmup):
        eager(clips, pids)
        compiled(clips, pids)
    times = {"eager": [], "compiled": []}
    for _ in range(args.steps):
        for name, step in (("eager", eager), ("compiled", compiled)):
            t0 = time.perf_counter()
            step(clips, pids)
            times[name].append(time.perf_counter() - t0)
    return {
        "compile_first_step_s": round(first, 2),
        "first_loss": {"eager": loss_e, "compiled": loss_c},
        **{f"{k}_median_s": round(statistics.median(v), 4) for k, v in times.items()},
        **{f"{k}_steps_s": [round(t, 4) for t in v] for k, v in times.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--arch", default="ap3d_resnet18")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-identities", type=int, default=8)
    p.add_argument("--num-instances", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=4)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--mode", default="default", help="torch.compile mode")
    p.add_argument("--warm-cache", action="store_true",
                   help="use inductor's usual on-disk cache (default: an empty one, so compilation is timed cold)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not args.warm_cache:  # read by inductor when it compiles, so setting it here is in time
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_compile_inductor_")
    load0 = os.getloadavg()[0]
    res = run(args)
    speedup = res["eager_median_s"] / res["compiled_median_s"]
    print(f"compilation (first compiled step): {res['compile_first_step_s']:.1f}s")
    print(f"median training step: eager {res['eager_median_s']:.3f}s, compiled {res['compiled_median_s']:.3f}s "
          f"-> speed-up {speedup:.2f}x; load average {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "args": vars(args),
        **res,
        "speedup": round(speedup, 3),
    }
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"compile_{args.device}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=2)
        fh.write("\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
