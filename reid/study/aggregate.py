"""Aggregating whatever cells have finished: mean +- std over seeds, a table, a plot, a JSON."""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from typing import Optional

from .ablation import ablation_record
from .grid import Study, format_level
from .runner import cell_record

__all__ = ["aggregate", "paired_contrasts", "write_outputs", "format_table", "CONTRASTS", "APM_CONTRASTS"]

METRICS = ("rank1", "mAP")

# The comparisons that test the paper's claim, as (network, baseline): APM added to the same 3D
# network, then each temporal network against C2D.
APM_CONTRASTS = (("ap3d", "p3d_c"), ("ap_i3d", "i3d"))
CONTRASTS = APM_CONTRASTS + (("ap3d", "c2d"), ("p3d_c", "c2d"), ("ap_i3d", "c2d"), ("i3d", "c2d"))


def _mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n-1); std is None for a single seed."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return mean, std


def _t_quantile_975(df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def paired_contrasts(study: Study, metric: str = "mAP") -> list[dict]:
    """Per contrast (network - baseline) and level: the difference of `metric` within each seed
    whose two cells both finished, its mean, sample std and 95 % confidence interval (Student t,
    n - 1 degrees of freedom). Cells of one seed share the pretrained backbone, the head's
    initialisation and the data order, so differences within a seed are paired: their spread is
    far smaller than the spread of either network's scores over seeds."""
    results: dict = {}
    for cell in study.cells:
        if cell.done:
            with open(cell.results_path) as fh:
                results[(cell.network, cell.level, cell.seed)] = 100.0 * json.load(fh)["metrics"][metric]
    arch = {net: f"{net}_{study.budget.backbone}" for net in study.budget.networks}  # "ap3d" -> "ap3d_resnet18"
    out = []
    for net, base in CONTRASTS:
        if net not in arch or base not in arch:
            continue
        for level in study.budget.levels:
            level = float(level)
            seeds = [s for s in study.budget.seeds
                     if (arch[net], level, s) in results and (arch[base], level, s) in results]
            if not seeds:
                continue
            diffs = [results[arch[net], level, s] - results[arch[base], level, s] for s in seeds]
            mean, std = _mean_std(diffs)
            half = _t_quantile_975(len(diffs) - 1) * std / math.sqrt(len(diffs)) if std is not None else None
            out.append({"network": arch[net], "baseline": arch[base], "adds_apm": (net, base) in APM_CONTRASTS,
                        "misalignment": level, "metric": metric,
                        "seeds": seeds, "differences": diffs, "mean": mean, "std": std,
                        "ci95": None if half is None else [mean - half, mean + half]})
    return out


def aggregate(study: Study) -> dict:
    """Per (network, level): n seeds, mean/std of Rank-1 and mAP (percent), temporal weight norms."""
    groups: dict = defaultdict(list)
    for cell in study.cells:
        if not cell.done:
            continue
        with open(cell.results_path) as fh:
            result = json.load(fh)
        record = cell_record(cell) or {}
        groups[(cell.network, cell.level)].append((cell.seed, result["metrics"], record.get("temporal_weights"),
                                                   ablation_record(cell)))
    rows = []
    order = {n: i for i, n in enumerate(dict.fromkeys(c.network for c in study.cells))}
    for (network, level), items in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], kv[0][1])):
        row = {"network": network, "misalignment": level, "n": len(items), "seeds": sorted(s for s, *_ in items)}
        for metric in METRICS:
            mean, std = _mean_std([100.0 * m[metric] for _, m, _, _ in items])
            row[metric] = {"mean": mean, "std": std, "values": [100.0 * m[metric] for _, m, _, _ in items]}
        rel = [tw["relative"] for _, _, tw, _ in items if tw is not None and tw["num_blocks"]]
        row["temporal_relative_norm"] = _mean_std(rel)[0] if rel else None
        # mAP with the temporal weights zeroed (ablation.py), over the seeds that have it
        drops = [100.0 * (a["full"]["mAP"] - a["temporal_zeroed"]["mAP"]) for *_, a in items if a is not None]
        row["temporal_ablation_mAP_drop"] = ({"mean": _mean_std(drops)[0], "std": _mean_std(drops)[1], "n": len(drops)}
                                             if drops else None)
        rows.append(row)
    total = len(study.cells)
    done = sum(c.done for c in study.cells)
    return {"budget": study.budget.name, "cells_done": done, "cells_total": total, "rows": rows,
            "contrasts": paired_contrasts(study), "pretrain_done": study.pretrain.done}


def _pm(stat: dict) -> str:
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}" if stat["std"] is not None else f"{stat['mean']:.2f}"


def format_table(summary: dict) -> str:
    lines = [f"Misalignment study ({summary['budget']} budget): {summary['cells_done']}/{summary['cells_total']} "
             "cells finished. Mean ± sample std over n seeds (no ± when n = 1).", "",
             "| network | misalignment | n | Rank-1 (%) | mAP (%) | temporal / spatial weight norm "
             "| mAP lost with temporal weights zeroed (n) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in summary["rows"]:
        rel = "-" if r["temporal_relative_norm"] is None else f"{r['temporal_relative_norm']:.3f}"
        drop = r.get("temporal_ablation_mAP_drop")
        drop = "-" if drop is None else f"{_pm(drop)} ({drop['n']})"
        lines.append(f"| {r['network']} | {format_level(r['misalignment'])} | {r['n']} | {_pm(r['rank1'])} | "
                     f"{_pm(r['mAP'])} | {rel} | {drop} |")
    if summary.get("contrasts"):
        lines += ["", "Paired differences of mAP (points), network minus baseline within each seed (same backbone, "
                  "head initialisation and data order); 95 % CI from Student's t over the seeds.", "",
                  "| network - baseline | misalignment | n | per seed | mean ± std | 95 % CI |",
                  "|---|---:|---:|---|---:|---:|"]
        for c in summary["contrasts"]:
            per_seed = ", ".join(f"{d:+.2f}" for d in c["differences"])
            pm = f"{c['mean']:+.2f}" + (f" ± {c['std']:.2f}" if c["std"] is not None else "")
            ci = "-" if c["ci95"] is None else f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]"
            lines.append(f"| {c['network']} - {c['baseline']} | {format_level(c['misalignment'])} | "
                         f"{len(c['seeds'])} | {per_seed} | {pm} | {ci} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str) -> Optional[str]:
    """Left: mAP vs misalignment, one line per network, error bars = std over seeds. Right (when
    seeds are paired): what APM adds to the same 3D network, mean paired difference with its 95 % CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    apm_contrasts = [c for c in summary.get("contrasts", []) if c["adds_apm"]]
    fig, axes = plt.subplots(1, 2 if apm_contrasts else 1, figsize=(11 if apm_contrasts else 6, 4.2), dpi=120,
                             squeeze=False)
    ax = axes[0][0]
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
    if apm_contrasts:
        ax = axes[0][1]
        by_pair: dict = defaultdict(list)
        for c in apm_contrasts:
            by_pair[(c["network"], c["baseline"])].append(c)
        for k, ((net, base), cs) in enumerate(by_pair.items()):
            cs.sort(key=lambda c: c["misalignment"])
            x = [c["misalignment"] + (k - (len(by_pair) - 1) / 2) * 0.015 for c in cs]
            y = [c["mean"] for c in cs]
            lo = [c["mean"] - c["ci95"][0] if c["ci95"] else 0.0 for c in cs]
            hi = [c["ci95"][1] - c["mean"] if c["ci95"] else 0.0 for c in cs]
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=f"{net} - {base}")
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xlabel("misalignment level of the synthetic set")
        ax.set_ylabel("paired mAP difference (points)")
        ax.set_title("What APM adds (same seed; 95 % CI)")
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
