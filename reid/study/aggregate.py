"""Aggregating whatever cells have finished: mean +- std over seeds, a table, a plot, a JSON."""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Optional

from .grid import Study, format_level
from .runner import cell_record

__all__ = ["aggregate", "write_outputs", "format_table"]

METRICS = ("rank1", "mAP")


def _mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n-1); std is None for a single seed."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std


def aggregate(study: Study) -> dict:
    """Per (network, level): n seeds, mean/std of Rank-1 and mAP (percent), temporal weight norms."""
    groups: dict = defaultdict(list)
    for cell in study.cells:
        if not cell.done:
            continue
        with open(cell.results_path) as fh:
            result = json.load(fh)
        record = cell_record(cell) or {}
        groups[(cell.network, cell.level)].append((cell.seed, result["metrics"], record.get("temporal_weights")))
    rows = []
    order = {n: i for i, n in enumerate(dict.fromkeys(c.network for c in study.cells))}
    for (network, level), items in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        row = {"network": network, "misalignment": level, "n": len(items), "seeds": sorted(s for s, _, _ in items)}
        for metric in METRICS:
            mean, std = _mean_std([100.0 * m[metric] for _, m, _ in items])
            row[metric] = {"mean": mean, "std": std, "values": [100.0 * m[metric] for _, m, _ in items]}
        rel = [tw["relative"] for _, _, tw in items if tw is not None and tw["num_blocks"]]
        row["temporal_relative_norm"] = _mean_std(rel)[0] if rel else None
        rows.append(row)
    total = len(study.cells)
    done = sum(c.done for c in study.cells)
    return {"budget": study.budget.name, "cells_done": done, "cells_total": total, "rows": rows,
            "pretrain_done": study.pretrain.done}


def _pm(stat: dict) -> str:
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}" if stat["std"] is not None else f"{stat['mean']:.2f}"


def format_table(summary: dict) -> str:
    lines = [f"Misalignment study ({summary['budget']} budget): {summary['cells_done']}/{summary['cells_total']} "
             "cells finished. Mean ± sample std over n seeds (no ± when n = 1).", "",
             "| network | misalignment | n | Rank-1 (%) | mAP (%) | temporal / spatial weight norm |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        rel = "-" if r["temporal_relative_norm"] is None else f"{r['temporal_relative_norm']:.3f}"
        lines.append(f"| {r['network']} | {format_level(r['misalignment'])} | {r['n']} | {_pm(r['rank1'])} | "
                     f"{_pm(r['mAP'])} | {rel} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str) -> Optional[str]:
    """mAP vs misalignment, one line per network, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    by_net: dict = defaultdict(list)
    for r in summary["rows"]:
        by_net[r["network"]].append(r)
    for k, (net, rows) in enumerate(by_net.items()):
        rows.sort(key=lambda r: r["misalignment"])
        x = [r["misalignment"] + (k - (len(by_net) - 1) / 2) * 0.012 for r in rows]  # dodge overlapping bars
        y = [r["mAP"]["mean"] for r in rows]
        err = [r["mAP"]["std"] or 0.0 for r in rows]
        ns = sorted({r["n"] for r in rows})
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{net} (n={'/'.join(map(str, ns))})")
    ax.set_xlabel("misalignment level of the synthetic set")
    ax.set_ylabel("mAP (%)")
    ax.set_title(f"Misalignment study, {summary['budget']} budget: "
                 f"{summary['cells_done']}/{summary['cells_total']} cells")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(study: Study, out_dir: Optional[str] = None) -> dict:
    """Write misalignment_table.md, misalignment.json and misalignment_map.png; returns their paths."""
    out_dir = out_dir or study.out
    os.makedirs(out_dir, exist_ok=True)
    summary = aggregate(study)
    paths = {"table": os.path.join(out_dir, "misalignment_table.md"),
             "json": os.path.join(out_dir, "misalignment.json"),
             "plot": os.path.join(out_dir, "misalignment_map.png")}
    with open(paths["table"], "w") as fh:
        fh.write(format_table(summary))
    with open(paths["json"], "w") as fh:
        json.dump(summary, fh, indent=2)
    if summary["rows"]:
        plot(summary, paths["plot"])
    else:
        del paths["plot"]
    return paths
