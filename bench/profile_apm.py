"""Where the time of one APM call goes: the kernels it launches, their device time, and the
host time around them (launch and Python overhead), for one backend at one of the paper's shapes.

    python bench/profile_apm.py --device cuda --backend triton --stage stage2 --dtype bfloat16
    python bench/profile_apm.py --device cpu --backend cpu --batch 8

It prints, for the forward and for forward+backward, the wall time per call, the summed device
(CUDA) or CPU time of the kernels, and the top kernels by that time (``torch.profiler``).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import time_runs  # noqa: E402
from bench_apm import STAGES, make_inputs  # noqa: E402

from ap3d_kernels import apm  # noqa: E402


def profile_calls(fn, device, steps: int, top: int) -> str:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    fn()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = prof.key_averages()
    if device.type == "cuda":
        kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    else:
        kernel_us = sum(e.self_cpu_time_total for e in events)
    table = events.table(sort_by=sort, row_limit=top, max_name_column_width=60)
    return f"kernels: {kernel_us / steps / 1e3:.3f} ms per call ({'device' if device.type == 'cuda' else 'CPU'} time)\n{table}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--backend", default="auto", help="an APM backend name (auto, reference, cpu, triton)")
    p.add_argument("--stage", default="stage2", choices=sorted(STAGES))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int, default=None, help="clips (default: 8 on cpu, 32 on cuda)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    C, H, W = STAGES[args.stage]
    B = args.batch or (8 if device.type == "cpu" else 32)
    inputs = make_inputs(B, C, 4, H, W, device, getattr(torch, args.dtype))
    leaves = [t.detach().requires_grad_() for t in inputs]
    grad_out = torch.randn_like(apm(*inputs, backend=args.backend))

    def forward():
        with torch.no_grad():
            apm(*inputs, backend=args.backend)

    def forward_backward():
        apm(*leaves, backend=args.backend).backward(grad_out)
        for t in leaves:
            t.grad = None

    print(f"# {args.backend} APM, {args.stage} C={C} {H}x{W}, B={B} T=4, {args.dtype}, {device}")
    for name, fn in (("forward", forward), ("forward+backward", forward_backward)):
        wall, _ = time_runs(fn, device, 2, args.steps)
        print(f"\n## {name}: {wall * 1e3:.3f} ms per call (wall, fastest of {args.steps})")
        print(profile_calls(fn, device, args.steps, args.top))


if __name__ == "__main__":
    main()
