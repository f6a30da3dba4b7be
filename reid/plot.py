"""Pictures of a run: CMC curves and training curves (PNG, matplotlib's Agg canvas, no display).

    python -m reid.plot runs/ap3d_synthetic                              # one run: its figure
    python -m reid.plot runs/ap3d runs/c2d runs/p3d --out compare.png    # several runs on one figure

``reid.train`` and ``reid.test`` call :func:`write_run_plots` after writing their results, so
every run directory holds:

* ``cmc.png``: the CMC curve, ranks 1..50, of the final evaluation (``results.json``), with the
  re-ranked curve when re-ranking was run; ``<stem>.cmc.png`` for each ``<stem>.results.json``
  that ``reid.test`` wrote next to a checkpoint;
* ``training_curves.png``: loss (and its cross-entropy / triplet parts), accuracy, learning rate
  and evaluation mAP / rank-1 by epoch.

Sources: ``train_log.jsonl`` (one record per step), the evaluations during training
(``eval/*`` scalars of the run's TensorBoard events, written every ``--eval-every`` epochs) and
the final ``results.json``. The CMC values drawn are the evaluator's own (``"cmc"`` in the
results file), not recomputed.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

__all__ = ["RunHistory", "load_run", "cmc_curves", "cmc_figure", "training_figure", "comparison_figure", "plot_cmc",
           "plot_training", "plot_comparison", "plot_results_file", "write_run_plots", "main"]

STEP_LOG = "train_log.jsonl"
RESULTS = "results.json"
CMC_PNG = "cmc.png"
CURVES_PNG = "training_curves.png"
_log = logging.getLogger("reid")


@dataclass
class RunHistory:
    """Everything plotted for one run, as read from its directory."""

    name: str
    path: str
    steps: dict = field(default_factory=dict)  # key -> np.ndarray over steps; "x" = fractional epoch
    epochs: dict = field(default_factory=dict)  # key -> np.ndarray of per-epoch means; "epoch" = 1..E
    evals: dict = field(default_factory=dict)  # metric -> {epoch: value}, evaluations during and after training
    results: Optional[dict] = None  # results.json (final evaluation)


def _read_step_log(path: str) -> list[dict]:
    records, bad = [], 0
    with open(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # e.g. the last line of a run killed mid-write
                bad += 1
    if bad:
        _log.warning(f"{path}: {bad} unreadable line(s) skipped")
    return [r for r in records if "step" in r and "epoch" in r]


def _steps_and_epochs(records: list[dict]) -> tuple[dict, dict]:
    if not records:
        return {}, {}
    records = sorted(records, key=lambda r: r["step"])
    keys = [k for k in ("loss", "ce", "triplet", "acc", "lr") if k in records[0]]
    epoch = np.array([r["epoch"] for r in records])
    # fractional epoch of each step: step k of n in epoch e sits at e + (k + 1) / n
    x = np.empty(len(records))
    for e in np.unique(epoch):
        idx = np.nonzero(epoch == e)[0]
        x[idx] = e + np.arange(1, len(idx) + 1) / len(idx)
    steps = {"x": x, **{k: np.array([r[k] for r in records], dtype=float) for k in keys}}
    done = np.unique(epoch)
    epochs = {"epoch": done + 1, **{k: np.array([steps[k][epoch == e].mean() for e in done]) for k in keys}}
    return steps, epochs


def _read_eval_scalars(run_dir: str) -> dict:
    """``eval/<metric>`` by epoch from the run's TensorBoard events (later files win)."""
    tb_dir = os.path.join(run_dir, "tensorboard")
    if not glob.glob(os.path.join(tb_dir, "events.out.tfevents.*")):
        return {}
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:  # tensorboard is a dependency; without it only the final evaluation is drawn
        return {}
    out: dict = {}
    # file names start with their creation time: a resumed run's events come after, and win
    for path in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
        acc = EventAccumulator(path, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.startswith("eval/"):
                series = out.setdefault(tag[len("eval/"):], {})
                for ev in acc.Scalars(tag):
                    series[int(ev.step)] = float(ev.value)
    return out


def load_run(path: str, name: Optional[str] = None) -> RunHistory:
    """Read a run directory written by ``reid.train`` (or one ``*.results.json`` file)."""
    if os.path.isfile(path):
        if not path.endswith(".json"):
            raise ValueError(f"run: got the file {path}; expected a run directory or a results .json file")
        with open(path) as fh:
            results = json.load(fh)
        return RunHistory(name or os.path.basename(path)[: -len(".json")], path, results=results)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"run: {path} does not exist (expected a directory written by reid.train)")
    run = RunHistory(name or os.path.basename(os.path.normpath(path)), path)
    log_path = os.path.join(path, STEP_LOG)
    if os.path.isfile(log_path):
        run.steps, run.epochs = _steps_and_epochs(_read_step_log(log_path))
    run.evals = _read_eval_scalars(path)
    res_path = os.path.join(path, RESULTS)
    if os.path.isfile(res_path):
        with open(res_path) as fh:
            run.results = json.load(fh)
        final_epoch = run.results.get("epochs")
        if final_epoch is not None:  # the final evaluation is the last point of the mAP curve
            for k in ("mAP", "rank1", "mINP"):
                if k in run.results.get("metrics", {}):
                    run.evals.setdefault(k, {})[int(final_epoch)] = float(run.results["metrics"][k])
    if not run.steps and run.results is None:
        raise FileNotFoundError(f"run: {path} holds neither {STEP_LOG} nor {RESULTS}; is it a reid.train output directory?")
    return run


def cmc_curves(results: dict) -> list[tuple[str, np.ndarray, dict]]:
    """(label, CMC as fractions over ranks 1..len, metrics) for each evaluation in a results dict."""
    curves = []
    if "cmc" in results:
        curves.append(("cosine", np.asarray(results["cmc"], dtype=float), results.get("metrics", {})))
    rr = results.get("rerank")
    if rr and "cmc" in rr:
        curves.append(("re-ranked", np.asarray(rr["cmc"], dtype=float), rr.get("metrics", {})))
    return curves


def _new_figure(rows: int, cols: int, size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes.ravel()


def _save(fig, out: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    tmp = f"{out}.tmp.{os.getpid()}.png"
    fig.savefig(tmp)
    os.replace(tmp, out)  # a half-written PNG is never left under the final name
    return out


def _draw_cmc(ax, runs: Sequence[RunHistory]) -> bool:
    drawn = False
    for i, run in enumerate(runs):
        if run.results is None:
            continue
        for label, cmc, metrics in cmc_curves(run.results):
            ranks = np.arange(1, len(cmc) + 1)
            style = "-" if label == "cosine" else "--"
            name = label if len(runs) == 1 else f"{run.name} ({label})"
            if "rank1" in metrics and "mAP" in metrics:
                name += f": R1 {100 * metrics['rank1']:.1f}, mAP {100 * metrics['mAP']:.1f}"
            ax.plot(ranks, 100 * cmc, style, color=f"C{i}", label=name, drawstyle="steps-post")
            drawn = True
    ax.set(xlabel="rank", ylabel="matching rate (%)", title="CMC")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize="small", loc="lower right")
    return drawn


def _draw_series(ax, runs: Sequence[RunHistory], key: str, title: str, scale: float = 1.0, log: bool = False,
                 parts: Sequence[str] = ()) -> None:
    for i, run in enumerate(runs):
        if key not in run.steps:
            continue
        label = run.name if len(runs) > 1 else key
        ax.plot(run.steps["x"], scale * run.steps[key], color=f"C{i}", alpha=0.3, linewidth=0.8)
        ax.plot(run.epochs["epoch"], scale * run.epochs[key], "o-", color=f"C{i}", label=f"{label} (epoch mean)")
        for j, part in enumerate(parts if len(runs) == 1 else ()):
            if part in run.epochs:
                ax.plot(run.epochs["epoch"], run.epochs[part], "s--", color=f"C{j + 1}", label=f"{part} (epoch mean)")
    ax.set(xlabel="epoch", title=title)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")


def _draw_evals(ax, runs: Sequence[RunHistory], metrics: Sequence[str], title: str) -> None:
    """Evaluation metrics (percent) by epoch: one colour per run, one line style per metric."""
    for i, run in enumerate(runs):
        for metric, style in zip(metrics, ("o-", "s--", "^:")):
            series = run.evals.get(metric)
            if series:
                epochs = sorted(series)
                label = metric if len(runs) == 1 else run.name if len(metrics) == 1 else f"{run.name} {metric}"
                ax.plot(epochs, [100 * series[e] for e in epochs], style, color=f"C{i}", label=label)
    ax.set(xlabel="epoch", ylabel="%", title=title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")


def cmc_figure(runs: Sequence[RunHistory]):
    """CMC curves (ranks 1..50) of the runs' final evaluations; None if none holds a CMC."""
    fig, (ax,) = _new_figure(1, 1, (6, 4.5))
    return fig if _draw_cmc(ax, runs) else None


def training_figure(runs: Sequence[RunHistory]):
    """Loss, accuracy, learning rate and evaluation mAP / rank-1 by epoch; None without a step log."""
    if not any(run.steps for run in runs):
        return None
    fig, axes = _new_figure(2, 2, (11, 8))
    _draw_series(axes[0], runs, "loss", "training loss", parts=("ce", "triplet"))
    _draw_series(axes[1], runs, "acc", "training accuracy (%)", scale=100.0)
    _draw_series(axes[2], runs, "lr", "learning rate", log=True)
    _draw_evals(axes[3], runs, ("mAP", "rank1"), "evaluation mAP and rank-1")
    return fig


def comparison_figure(runs: Sequence[RunHistory]):
    """Every run on one figure: loss, accuracy, learning rate, mAP and rank-1 by epoch, CMC."""
    fig, axes = _new_figure(2, 3, (16, 8.5))
    _draw_series(axes[0], runs, "loss", "training loss")
    _draw_series(axes[1], runs, "acc", "training accuracy (%)", scale=100.0)
    _draw_series(axes[2], runs, "lr", "learning rate", log=True)
    _draw_evals(axes[3], runs, ("mAP",), "evaluation mAP")
    _draw_evals(axes[4], runs, ("rank1",), "evaluation rank-1")
    _draw_cmc(axes[5], runs)
    return fig


def plot_cmc(runs: Sequence[RunHistory], out: str) -> Optional[str]:
    fig = cmc_figure(runs)
    return _save(fig, out) if fig is not None else None


def plot_training(runs: Sequence[RunHistory], out: str) -> Optional[str]:
    fig = training_figure(runs)
    return _save(fig, out) if fig is not None else None


def plot_comparison(runs: Sequence[RunHistory], out: str) -> str:
    return _save(comparison_figure(runs), out)


def plot_results_file(results_json: str) -> Optional[str]:
    """``X.results.json`` -> ``X.cmc.png`` (``results.json`` -> ``cmc.png``) beside it; None without a CMC."""
    directory, base = os.path.split(results_json)
    stem = base[: -len("results.json")] if base.endswith("results.json") else os.path.splitext(base)[0] + "."
    return plot_cmc([load_run(results_json, name=stem.rstrip(".") or "results")],
                    os.path.join(directory, f"{stem}{CMC_PNG}"))


def write_run_plots(run_dir: str) -> list[str]:
    """Write ``cmc.png`` / ``<stem>.cmc.png`` and ``training_curves.png`` into a run directory.

    Also plots the ``split<k>/`` runs of a ``--split-id all`` run. Returns the files written.
    """
    written = []
    for directory in [run_dir, *sorted(glob.glob(os.path.join(run_dir, "split[0-9]*")))]:
        if not os.path.isdir(directory):
            continue
        if os.path.isfile(os.path.join(directory, STEP_LOG)) or os.path.isfile(os.path.join(directory, RESULTS)):
            run = load_run(directory)
            for out, fn in ((CMC_PNG, plot_cmc), (CURVES_PNG, plot_training)):
                path = fn([run], os.path.join(directory, out))
                if path:
                    written.append(path)
        for res in sorted(glob.glob(os.path.join(directory, "*.results.json"))):  # reid.test outputs
            path = plot_results_file(res)
            if path:
                written.append(path)
    return written


def _run_names(paths: Sequence[str]) -> list[str]:
    names = [os.path.basename(os.path.normpath(p)) for p in paths]
    if len(set(names)) == len(names):
        return names
    common = os.path.commonpath([os.path.abspath(p) for p in paths])
    return [os.path.relpath(os.path.abspath(p), common) for p in paths]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reid.plot", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="run directories written by reid.train (or *.results.json files)")
    p.add_argument("--out", default=None, metavar="PNG",
                   help="figure to write [default: RUN_DIR/overview.png for one run, comparison.png for several]")
    args = p.parse_args(argv)
    try:
        runs = [load_run(path, name) for path, name in zip(args.runs, _run_names(args.runs))]
    except (FileNotFoundError, ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = args.out or (os.path.join(args.runs[0], "overview.png") if len(runs) == 1 and os.path.isdir(args.runs[0])
                       else "comparison.png")
    print(f"written: {plot_comparison(runs, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
