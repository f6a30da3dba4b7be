"""What the benchmarks share: timing (fastest of N), machine facts, and writing results.

Timing takes the fastest of N runs because on a machine shared with other processes
interference only ever adds time; the median is kept next to it.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from datetime import datetime, timezone

import torch

# ISA features that decide which kernels oneDNN / the fused APM kernel can use
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "bf16")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn, device, warmup: int, repeats: int):
    """(min, median) wall time in seconds of fn over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def _cpuinfo() -> tuple[str, list[str], str]:
    """Model name, the ISA flags that matter here, and "family F model M" (x86: the same model
    name, e.g. "AMD EPYC", covers CPU generations that time differently)."""
    model, flags, ids = platform.processor() or platform.machine(), [], {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    present = set(value.split())
                    flags = [f for f in ISA_FLAGS if f in present]
                elif key in ("cpu family", "model") and key not in ids:
                    ids[key] = value.strip()
    except OSError:
        pass
    generation = f"family {ids['cpu family']} model {ids['model']}" if len(ids) == 2 else ""
    return model, flags, generation


def _git_commit() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+uncommitted" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_facts(device: torch.device) -> dict:
    """Date, commit, CPU model and ISA flags, threads, library versions, GPU (if any), load average."""
    model, flags, generation = _cpuinfo()
    facts = {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "device": str(device),
        "cpu": model,
        "cpu_generation": generation,
        "cpu_isa_flags": flags,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": torch.backends.mkldnn.is_available(),
        "load_avg_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(device)
        facts["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        facts["cuda"] = torch.version.cuda
    return facts


def describe_machine(facts: dict) -> str:
    """One line: what ran where, and how loaded the machine was."""
    where = facts.get("gpu") or ", ".join(filter(None, [facts["cpu"], facts.get("cpu_generation")]))
    load = f"load average {facts['load_avg_start'][0]:.2f} at start"
    if "load_avg_end" in facts:
        load += f", {facts['load_avg_end'][0]:.2f} at end"
    return (f"{facts['date_utc']}, commit {facts['commit']}, {where} ({', '.join(facts['cpu_isa_flags']) or 'no ISA flags read'}), "
            f"{facts['threads']} threads of {facts['cpu_count']} CPUs, torch {facts['torch']}; {load}")


def write_results(stem: str, payload: dict, markdown: str) -> list[str]:
    """Write ``stem.json`` and ``stem.md``; returns their paths."""
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    with open(stem + ".json", "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    with open(stem + ".md", "w") as fh:
        fh.write(markdown)
    return [stem + ".json", stem + ".md"]
