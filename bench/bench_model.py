#!/usr/bin/env python3
"""Whole-model benchmark: training step and feature extraction of C2D, P3D-C and AP3D.

    python bench/bench_model.py --device cpu              # both shapes, every setting (long)
    python bench/bench_model.py --device cpu --shapes paper --compile off
    python bench/bench_model.py --quick                   # tiny smoke run (tests, GPU check script)

Shapes: "default" = what ``python -m reid.train`` runs (ResNet-18, clips of 4x128x64, batch 8x4 = 32,
test clips of 32 frames in batches of 8) and "paper" (ResNet-50, 4x256x128, batch 8 on CPU / 32 on
GPU; test batches of 2 clips of 32 frames on CPU, 8 on GPU). Settings: precision (fp32, bf16
autocast, fp16 autocast on CUDA) x layout (contiguous NCDHW, channels_last_3d) x torch.compile
(off/on; on is tried at the shapes in --compile-shapes, and a failure is recorded with its reason).

- training step: forward, the ReID loss (cross-entropy + triplet), backward and an Adam step on
  random clips, exactly as ``reid.engine.trainer`` does it (GradScaler under fp16);
- inference: eval-mode forward under ``torch.inference_mode``, reported as clips/s and frames/s;
- every (setting, network) of a shape is warmed up, then all are timed round-robin (one training
  step of each in turn, --repeats rounds; then the same for inference) so that load changing over
  time hits every setting alike; each figure is the fastest of --repeats runs;
- data wait (default shape): AP3D trains --data-steps steps on batches from the real train loader
  (the cached synthetic set, --workers loader workers, ``auto`` as in the default run); the share of
  wall time spent blocked on the loader is reported next to that step time;
- --profile: where AP3D's extra training time over C2D goes (torch.profiler, self time per op);
- --malloc: the host allocator policy, ``auto`` as in the default run (``reid.engine.allocator``).

Results: a table on stdout and bench/results/model_<device>.{json,md} with the machine's facts.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import describe_machine, machine_facts, sync, write_results  # noqa: E402
from reid.engine.allocator import MALLOC_CHOICES, configure_allocator  # noqa: E402
from reid.engine.precision import resolve_policy  # noqa: E402
from reid.engine.optim import build_optimizer  # noqa: E402
from reid.engine.workers import check_num_workers, describe_workers, parse_num_workers, resolve_num_workers  # noqa: E402
from reid.losses import ReIDLoss  # noqa: E402
from reid.models import build_model  # noqa: E402

ARCHS = {"C2D": "c2d", "P3D-C": "p3d_c", "AP3D": "ap3d"}
AMP = {"fp32": "none", "bf16": "bf16", "fp16": "fp16"}


@dataclass(frozen=True)
class Shape:
    backbone: str
    T: int
    H: int
    W: int
    P: int  # identities per batch
    K: int  # clips per identity
    infer_clips: int
    infer_len: int
    num_classes: int

    @property
    def batch(self) -> int:
        return self.P * self.K

    def label(self) -> str:
        return f"{self.backbone}, {self.batch}x{self.T}x{self.H}x{self.W}"


def shapes_for(device: torch.device, quick: bool) -> dict:
    if quick:
        return {"quick": Shape("resnet18", 4, 32, 16, 2, 2, 2, 8, 8)}
    gpu = device.type == "cuda"
    return {
        "default": Shape("resnet18", 4, 128, 64, 8, 4, 8, 32, 150),
        "paper": Shape("resnet50", 4, 256, 128, 8 if gpu else 2, 4, 8 if gpu else 2, 32, 625),
    }


class Runner:
    """One network under one setting: a training step and an inference pass on fixed inputs."""

    def __init__(self, arch: str, shape: Shape, precision: str, layout: str, compiled: bool, device):
        self.device, self.policy = device, resolve_policy(AMP[precision], layout, device)
        torch.manual_seed(0)
        self.model = self.policy.prepare_model(build_model(f"{arch}_{shape.backbone}", num_classes=shape.num_classes).to(device))
        self.run = torch.compile(self.model) if compiled else self.model
        self.criterion = ReIDLoss(shape.num_classes)
        self.opt = build_optimizer(self.model.parameters(), "adam", lr=3e-4, weight_decay=5e-4)  # as the run builds it
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.policy.amp == "fp16")
        gen = torch.Generator().manual_seed(1)
        self.clips = torch.randn(shape.batch, 3, shape.T, shape.H, shape.W, generator=gen).to(device)
        self.pids = torch.arange(shape.P).repeat_interleave(shape.K).to(device)
        self.test_clips = torch.randn(shape.infer_clips, 3, shape.infer_len, shape.H, shape.W, generator=gen).to(device)

    def train_step(self, clips=None, pids=None):
        self.model.train()
        clips = self.policy.prepare_batch(self.clips if clips is None else clips.to(self.device, non_blocking=True))
        pids = self.pids if pids is None else pids.to(self.device)
        with self.policy.autocast(self.device):
            logits, feats = self.run(clips)
        loss, _ = self.criterion(logits.float(), feats.float(), pids)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss

    def infer(self):
        self.model.eval()
        with torch.inference_mode(), self.policy.autocast(self.device):
            return self.run(self.policy.prepare_batch(self.test_clips))


def interleaved(fns: dict, device, repeats: int) -> dict:
    """{name: (fastest, median) seconds}, running the functions round-robin."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {n: (min(t), sorted(t)[len(t) // 2]) for n, t in times.items()}


def real_batches(shape: Shape, args):
    """Endless (clips, pids) from the real train loader on the synthetic set (cached after first use)."""
    from reid.data import build_dataset, build_train_loader

    options = dict(num_train_ids=8, num_test_ids=4, min_frames=8, max_frames=16, height=shape.H, width=shape.W,
                   tracklets_per_camera=2) if args.quick else {}
    ds = build_dataset("synthetic", root=args.synthetic_root, verbose=False, **options)
    if ds.num_train_pids != shape.num_classes:  # the classifier must cover the loader's labels
        raise RuntimeError(f"synthetic set has {ds.num_train_pids} training identities, the shape expects {shape.num_classes}")
    loader = build_train_loader(ds.train, seq_len=shape.T, stride=8, height=shape.H, width=shape.W,
                                num_identities=shape.P, num_instances=shape.K,
                                num_workers=resolve_num_workers(args.workers, args.device)[0])
    epoch = 0
    while True:
        loader.batch_sampler.set_epoch(epoch)
        for clips, pids, _ in loader:
            yield clips, torch.as_tensor(pids).long()
        epoch += 1


def data_wait(runner: Runner, batches, steps: int, device) -> dict:
    """Train `steps` steps on loader batches: the step time and the share of it spent waiting."""
    runner.train_step(*next(batches))  # the first batch after a pause is not steady state
    waited, t0 = 0.0, time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - t
        runner.train_step(*batch)
        sync(device)
    total = time.perf_counter() - t0
    return {"loader_step_ms": 1e3 * total / steps, "data_wait_share": waited / total}


def warm_setting(shape_name, shape, setting, args, device):
    """({arch: Runner} warmed up, the row fields) or (None, a row saying why the setting was skipped)."""
    precision, layout, compiled = setting
    base = dict(shape=shape_name, **asdict(shape), batch=shape.batch, precision=precision, layout=layout,
                compile=compiled, warmup_s={})
    runners = {}
    try:
        for label in args.archs:
            runners[label] = Runner(ARCHS[label], shape, precision, layout, compiled, device)
            t0 = time.perf_counter()
            for _ in range(args.warmup):  # with compile on, the first calls compile
                runners[label].train_step()
                runners[label].infer()
            sync(device)
            base["warmup_s"][label] = round(time.perf_counter() - t0, 1)
    except Exception as exc:  # noqa: BLE001 -- a setting that cannot run is recorded, not fatal
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        print(f"  skipped: {reason}", flush=True)
        base.pop("warmup_s")
        return None, dict(base, skipped=reason)
    return runners, base


def measure_shape(shape_name, shape, settings, args, device, batches=None) -> list:
    """Rows for every (setting, network) of one shape, all timed round-robin so that load changing
    over time hits every setting alike; plus one row per setting that could not run."""
    warmed, rows = {}, []
    for setting in settings:
        print(f"{shape_name} ({shape.label()}) {setting[0]} {setting[1]} compile {'on' if setting[2] else 'off'}", flush=True)
        runners, base = warm_setting(shape_name, shape, setting, args, device)
        if runners is None:
            rows.append(base)
        else:
            warmed[setting] = (runners, base)
    jobs = {(st, label): r for st, (runners, _) in warmed.items() for label, r in runners.items()}
    train = interleaved({k: r.train_step for k, r in jobs.items()}, device, args.repeats)
    infer = interleaved({k: r.infer for k, r in jobs.items()}, device, args.repeats)
    auto = resolve_policy("auto", "auto", device)
    for st, (runners, base) in warmed.items():
        for label, r in runners.items():
            (t_min, t_med), (i_min, i_med) = train[(st, label)], infer[(st, label)]
            rows.append(dict(base, arch=label, auto=(r.policy.amp, r.policy.memory_format) == (auto.amp, auto.memory_format) and not st[2],
                             train_ms=1e3 * t_min, train_median_ms=1e3 * t_med, train_clips_per_s=shape.batch / t_min,
                             infer_ms=1e3 * i_min, infer_median_ms=1e3 * i_med,
                             infer_clips_per_s=shape.infer_clips / i_min,
                             infer_frames_per_s=shape.infer_clips * shape.infer_len / i_min))
            if batches is not None and label == "AP3D" and args.data_steps:
                rows[-1].update(data_wait(r, batches, args.data_steps, device))
            extra = f"  data wait {100 * rows[-1]['data_wait_share']:.1f}%" if "data_wait_share" in rows[-1] else ""
            print(f"  {st[0]} {st[1]} compile {'on' if st[2] else 'off'} {label:6s} train {rows[-1]['train_ms']:8.1f} ms  "
                  f"infer {rows[-1]['infer_frames_per_s']:7.1f} frames/s{extra}", flush=True)
    del warmed, jobs
    gc.collect()
    return rows


def profile_extra_time(shape: Shape, precision: str, layout: str, device, top: int = 12, steps: int = 3) -> list:
    """Self time per op and training step (mean of `steps`), AP3D minus C2D, largest differences first (ms)."""
    per_arch = {}
    for label in ("C2D", "AP3D"):
        r = Runner(ARCHS[label], shape, precision, layout, False, device)
        r.train_step()
        r.train_step()
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(steps):
                r.train_step()
            sync(device)
        attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        per_arch[label] = {e.key: getattr(e, attr) / 1e3 / steps for e in prof.key_averages()}
        del r
    ops = set(per_arch["C2D"]) | set(per_arch["AP3D"])
    diff = [(op, per_arch["AP3D"].get(op, 0.0), per_arch["C2D"].get(op, 0.0)) for op in ops]
    diff.sort(key=lambda d: -abs(d[1] - d[2]))
    total = {k: sum(v.values()) for k, v in per_arch.items()}
    return [{"op": "(all ops)", "ap3d_ms": total["AP3D"], "c2d_ms": total["C2D"]}] + [
        {"op": op, "ap3d_ms": a, "c2d_ms": c} for op, a, c in diff[:top]
    ]


def setting_key(r: dict) -> tuple:
    return r["shape"], r["precision"], r["layout"], r["compile"]


def merge_previous(stem: str, meta: dict, rows: list, profile: list):
    """--update: the previous results with the settings measured now replaced; every run's facts kept."""
    if not os.path.isfile(stem + ".json"):
        return [meta], rows, profile
    with open(stem + ".json") as fh:
        prev = json.load(fh)
    runs = prev.get("runs", [prev["meta"]])
    measured = {setting_key(r) for r in rows if "skipped" not in r}
    kept = [r for r in prev["rows"] if setting_key(r) not in measured]
    kept_measured = {setting_key(r) for r in kept if "skipped" not in r}
    rows = [r for r in rows if "skipped" not in r or setting_key(r) not in kept_measured]  # a skip never hides a figure
    kept = [r for r in kept if "skipped" not in r or setting_key(r) not in {setting_key(n) for n in rows}]
    if not profile and prev.get("profile"):
        profile, meta["profile"] = prev["profile"], next(m["profile"] for m in reversed(runs) if "profile" in m)
    for r in rows:
        r["run"] = len(runs)
    return runs + [meta], kept + rows, profile


def render_markdown(runs: list, rows: list, profile: list) -> str:
    meta = runs[-1]
    ok = [r for r in rows if "skipped" not in r]
    order = {v: i for i, v in enumerate(["quick", "default", "paper", False, True, "fp32", "bf16", "fp16",
                                         "contiguous", "channels_last_3d"])}
    settings = sorted(dict.fromkeys(setting_key(r) for r in ok), key=lambda k: (order[k[0]], order[k[3]], order[k[1]], order[k[2]]))
    by = {(r["shape"], r["precision"], r["layout"], r["compile"], r["arch"]): r for r in ok}
    archs = list(dict.fromkeys(r["arch"] for r in ok))
    shapes = {r["shape"]: r for r in ok}

    def cells(key, field, fmt):
        return " | ".join(format(by[(*key, a)][field], fmt) if (*key, a) in by else "-" for a in archs)

    def ratio(key, field):
        a, c = by.get((*key, "AP3D")), by.get((*key, "C2D"))
        return f"{a[field] / c[field]:.3f}" if a and c else "-"

    lines = [f"# Model benchmark: {meta['device']} ({meta.get('gpu', meta['cpu'])})", ""]
    for i, run in enumerate(runs):
        measured = sorted({f"{r['shape']} {r['precision']} {r['layout']} compile {'on' if r['compile'] else 'off'}"
                           for r in rows if r.get("run", 0) == i})
        lines += [(f"Run {i + 1} ({'; '.join(measured)}): " if len(runs) > 1 else "") + describe_machine(run) + ".",
                  "", f"Command: `{run['command']}`. {run['timing']}"
                  + "".join(f" {run[k][0].upper()}{run[k][1:]}." for k in ("loader", "malloc") if k in run), ""]
    lines += [
             "Shapes: " + "; ".join(f"**{n}** = {r['backbone']}, training batch {r['batch']} clips of "
                                    f"{r['T']}x{r['H']}x{r['W']}, inference batch {r['infer_clips']} clips of "
                                    f"{r['infer_len']} frames" for n, r in shapes.items()) + ".",
             "", "**auto** marks what `--amp auto --memory-format auto` picks on this machine. Speed-up: against "
             "fp32 contiguous eager of the same network and shape.", "", "## Training step (fwd + loss + bwd + Adam)", "",
             "| shape | precision | layout | compile | " + " | ".join(f"{a} ms" for a in archs)
             + " | AP3D/C2D | AP3D clips/s | AP3D speed-up | data wait (real loader) |",
             "|---|---|---|---|" + "---:|" * (len(archs) + 4)]
    def head(key):
        ap = by.get((*key, "AP3D"), {})
        return f"| {key[0]} | {key[1]}{' **auto**' if ap.get('auto') else ''} | {key[2]} | {'on' if key[3] else 'off'} | "

    for key in settings:
        base, ap = by.get((key[0], "fp32", "contiguous", False, "AP3D")), by.get((*key, "AP3D"))
        tail = " | - | - | - | - |"
        if ap:  # the speed-up needs the fp32 contiguous row of the same run; the rest does not
            wait = f"{100 * ap['data_wait_share']:.1f}% of {ap['loader_step_ms']:.0f} ms" if "data_wait_share" in ap else "-"
            speedup = f"{base['train_ms'] / ap['train_ms']:.2f}x" if base else "-"
            tail = f" | {ratio(key, 'train_ms')} | {ap['train_clips_per_s']:.1f} | {speedup} | {wait} |"
        lines.append(head(key) + cells(key, "train_ms", ".0f") + tail)
    lines += ["", "## Inference (eval-mode forward under inference_mode)", "",
              "| shape | precision | layout | compile | " + " | ".join(f"{a} frames/s" for a in archs)
              + " | AP3D clips/s | AP3D/C2D time | AP3D speed-up |", "|---|---|---|---|" + "---:|" * (len(archs) + 3)]
    for key in settings:
        base, ap = by.get((key[0], "fp32", "contiguous", False, "AP3D")), by.get((*key, "AP3D"))
        tail = " | - | - | - |"
        if ap:
            speedup = f"{base['infer_ms'] / ap['infer_ms']:.2f}x" if base else "-"
            tail = f" | {ap['infer_clips_per_s']:.2f} | {ratio(key, 'infer_ms')} | {speedup} |"
        lines.append(head(key) + cells(key, "infer_frames_per_s", ".0f") + tail)
    skipped = [r for r in rows if "skipped" in r]
    if skipped:
        lines += ["", "## Skipped settings", ""] + [
            f"- {r['shape']} {r['precision']} {r['layout']} compile {'on' if r['compile'] else 'off'}: {r['skipped']}"
            for r in skipped]
    compiled = [r for r in ok if r["compile"] and r["arch"] == archs[0]]
    if compiled:
        lines += ["", "Compile time (first training step + first inference, per network, s): " + "; ".join(
            f"{r['shape']} {r['precision']} {r['layout']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["warmup_s"].items())
            for r in compiled) + "."]
    if profile:
        p = meta["profile"]
        lines += ["", f"## Where AP3D's extra training time goes ({p['shape']}, {p['precision']}, {p['layout']})", "",
                  f"torch.profiler self time per op, mean of {p['steps']} training steps, largest AP3D - C2D differences first.", "",
                  "| op | AP3D ms | C2D ms | AP3D - C2D ms |", "|---|---:|---:|---:|"]
        lines += [f"| `{d['op']}` | {d['ap3d_ms']:.1f} | {d['c2d_ms']:.1f} | {d['ap3d_ms'] - d['c2d_ms']:+.1f} |" for d in profile]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="tiny shape, one repeat, no compile: a smoke run")
    p.add_argument("--shapes", default="default,paper", help="comma list of default, paper")
    p.add_argument("--archs", default=",".join(ARCHS), help=f"comma list of {', '.join(ARCHS)}")
    p.add_argument("--precisions", default=None, help="comma list (default: fp32,bf16 on cpu; fp32,bf16,fp16 on cuda)")
    p.add_argument("--layouts", default="contiguous,channels_last_3d")
    p.add_argument("--compile", default="off,on", help="comma list of off, on")
    p.add_argument("--compile-shapes", default="default", help="shapes where compile on is tried (it takes minutes per network on CPU)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data-steps", type=int, default=6, help="real-loader steps for the data-wait share (0 = skip)")
    p.add_argument("--workers", type=parse_num_workers, default="auto",
                   help="loader worker processes: auto (the default run's policy) or a number")
    p.add_argument("--malloc", default="auto", choices=MALLOC_CHOICES, help="host allocator policy (the default run's)")
    p.add_argument("--synthetic-root", default=None, help="synthetic set cache directory (default: ~/.cache)")
    p.add_argument("--profile", default=None, metavar="SHAPE:PRECISION:LAYOUT", help="profile AP3D vs C2D, e.g. paper:fp32:contiguous")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--update", action="store_true",
                   help="merge into the existing results: settings measured now replace theirs, the others are kept")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "bench", "results"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    try:
        check_num_workers(args.workers)
    except ValueError as exc:
        p.error(f"--workers: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    args.precisions = (args.precisions or ("fp32,bf16" if device.type == "cpu" else "fp32,bf16,fp16")).split(",")
    lists = {"archs": list(ARCHS), "precisions": list(AMP), "layouts": ["contiguous", "channels_last_3d"],
             "compile": ["off", "on"], "shapes": ["default", "paper"]}
    for key, allowed in lists.items():
        values = getattr(args, key) if isinstance(getattr(args, key), list) else getattr(args, key).split(",")
        if not values or any(v not in allowed for v in values):
            p.error(f"--{key}: got {','.join(values)}, expected a comma list of {', '.join(allowed)}")
        setattr(args, key, values)
    if args.profile and (len(args.profile.split(":")) != 3 or args.profile.split(":")[0] not in lists["shapes"]
                         or args.profile.split(":")[1] not in AMP or args.profile.split(":")[2] not in lists["layouts"]):
        p.error(f"--profile: got {args.profile}, expected SHAPE:PRECISION:LAYOUT, e.g. paper:bf16:channels_last_3d")
    if "fp16" in args.precisions and device.type == "cpu":
        p.error("--precisions: fp16 autocast is for CUDA; on CPU use fp32,bf16")
    if args.quick:
        args.shapes, args.compile, args.repeats, args.warmup, args.data_steps = ["quick"], ["off"], 1, 1, min(args.data_steps, 2)
        if args.profile:  # --quick profiles its own tiny shape
            args.profile = "quick:" + args.profile.split(":", 1)[1]
    return args, device


def main(argv=None):
    args, device = parse_args(argv)
    meta = machine_facts(device)
    meta.update(command="python bench/bench_model.py " + " ".join(sys.argv[1:] if argv is None else argv),
                timing=f"Each figure is the fastest of {args.repeats} runs after {args.warmup} warm-up run(s); "
                       "all settings and networks of a shape are timed round-robin.",
                auto_policy=resolve_policy("auto", "auto", device).as_dict(),
                malloc=configure_allocator(args.malloc),
                loader=describe_workers(args.workers, device))
    print(f"# model benchmark: {describe_machine(meta)}", flush=True)
    shapes, rows = shapes_for(device, args.quick), []
    stem = os.path.join(args.out_dir, f"model_{device.type}")
    for name in args.shapes:
        settings = []
        for compiled in (c == "on" for c in args.compile):
            for precision in args.precisions:
                for layout in args.layouts:
                    if compiled and name not in args.compile_shapes.split(",") + ["quick"]:
                        rows.append(dict(shape=name, precision=precision, layout=layout, compile=True,
                                         skipped=f"not tried at this shape (--compile-shapes {args.compile_shapes}): "
                                                 "compiling takes minutes per network and setting on this machine"))
                    else:
                        settings.append((precision, layout, compiled))
        batches = real_batches(shapes[name], args) if name in ("default", "quick") and args.data_steps else None
        rows += measure_shape(name, shapes[name], settings, args, device, batches)
        if not args.update:  # each finished shape is kept even if a later one is stopped at a time limit
            write_results(stem, {"meta": meta, "runs": [meta], "rows": rows, "profile": []},
                          render_markdown([meta], rows, []))
    profile = []
    if args.profile:
        shape_name, precision, layout = args.profile.split(":")
        profile = profile_extra_time(shapes[shape_name], precision, layout, device)
        meta["profile"] = dict(shape=shape_name, precision=precision, layout=layout, steps=3)
    meta["load_avg_end"] = list(os.getloadavg())
    runs = [meta]
    if args.update:
        runs, rows, profile = merge_previous(stem, meta, rows, profile)
    md = render_markdown(runs, rows, profile)
    paths = write_results(stem, {"meta": meta, "runs": runs, "rows": rows, "profile": profile}, md)
    print("\n" + md + "\nwritten: " + ", ".join(paths))


if __name__ == "__main__":
    main()
