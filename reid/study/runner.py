"""Running a study: the pretraining cell, then every unfinished cell, one subprocess each.

Resumable by construction: a cell is finished when its ``results.json`` exists (``reid.train``
writes it last, atomically) and is never rerun; every command carries ``--resume auto``, so a
cell that was killed continues from its last end-of-epoch checkpoint. A crashing cell is
reported and the study goes on. Pausing the study (SIGSTOP/SIGCONT to its process group)
pauses the running cell with it: cells run in the study's process group.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import Callable, Optional

from .grid import Cell, Study
from .pretrain import convert_checkpoint
from .temporal_norms import temporal_weight_norms

__all__ = ["run_study", "unfinished_commands", "cell_record", "CELL_RECORD", "PLAN_NAME"]

CELL_RECORD = "study_cell.json"   # per cell: wall time, command, temporal weight norms
PLAN_NAME = "study_plan.json"     # per study: the budget and every cell's arguments


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _write_json(obj, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2)
    os.replace(tmp, path)


def cell_record(cell: Cell) -> Optional[dict]:
    """The cell's study record (wall time, temporal weight norms); computed now if missing."""
    path = os.path.join(cell.out_dir, CELL_RECORD)
    if os.path.isfile(path):
        with open(path) as fh:
            return json.load(fh)
    if not cell.done:
        return None
    return _finish_record(cell, wall_s=None)


def _finish_record(cell: Cell, wall_s: Optional[float]) -> dict:
    import torch

    record = {"cell": cell.name, "wall_s": wall_s, "command": cell.shell_command()}
    ckpt_path = os.path.join(cell.out_dir, "checkpoint_last.pth")
    if os.path.isfile(ckpt_path):
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["model"]
        record["temporal_weights"] = temporal_weight_norms(state)
    _write_json(record, os.path.join(cell.out_dir, CELL_RECORD))
    return record


# The grid's extent: a study may grow (another seed, another network) without changing how any cell trains.
GRID_KEYS = ("networks", "levels", "seeds")


def _check_plan(study: Study) -> None:
    """A study directory holds one study: refuse to mix cells trained under different settings.

    Only the grid's extent may differ between runs (e.g. a third seed added later); the saved
    plan then lists the cells of every run."""
    path = os.path.join(study.out, PLAN_NAME)
    plan = json.loads(json.dumps(study.plan()))  # tuples -> lists, as read back
    if os.path.isfile(path):
        with open(path) as fh:
            saved = json.load(fh)
        settings = lambda b: {k: v for k, v in b.items() if k not in GRID_KEYS}  # noqa: E731
        old, new = settings(saved["budget"]), settings(plan["budget"])
        if old != new or saved["preset"] != plan["preset"]:
            diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
            raise ValueError(
                f"{study.out} holds a study run with another plan (option: (saved, now)) "
                f"{diff or {'preset': (saved['preset'], plan['preset'])}}; use another --out, or the same options")
        plan["cells"] = {**saved["cells"], **plan["cells"]}
    os.makedirs(study.out, exist_ok=True)
    _write_json(plan, path)


def unfinished_commands(study: Study, python: str = "python") -> list[str]:
    """Shell commands of every unfinished step, in dependency order (pretraining first)."""
    lines = []
    if not os.path.isfile(study.pretrained_path):
        lines.append("# stage 1: pretrain the shared 2D backbone (stage 2 needs its output)")
        if not study.pretrain.done:
            lines.append(study.pretrain.shell_command(python))
        lines.append(shlex.join([python, "-m", "reid.study.pretrain",
                                 os.path.join(study.pretrain.out_dir, "checkpoint_last.pth"), study.pretrained_path]))
    todo = [c for c in study.cells if not c.done]
    if todo:
        lines.append(f"# stage 2: {len(todo)} unfinished cell(s), independent of each other")
        lines += [c.shell_command(python) for c in todo]
    return lines


def _run_cell(cell: Cell, python: str, env: dict, log: Callable[[str], None]) -> tuple[int, float]:
    os.makedirs(cell.out_dir, exist_ok=True)
    if cell.started:
        log(f"  resuming {cell.name} from its last checkpoint")
    t0 = time.time()
    with open(os.path.join(cell.out_dir, "stdout.log"), "a") as out:
        out.write(f"\n$ {cell.shell_command(python)}\n")
        out.flush()
        proc = subprocess.Popen(cell.command(python), stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # the study is being stopped (SIGTERM/SIGINT): stop the cell first
                proc.terminate()
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return rc, time.time() - t0


def _install_signal_handlers():
    # SIGTERM ends the study like Ctrl-C: the exception unwinds through _run_cell, which stops
    # the running cell (its last checkpoint stays; --resume auto continues it next time).
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _convert_if_needed(study: Study) -> None:
    """The pretraining cell's checkpoint -> the shared 2D backbone (also when the cell was run by
    hand or by a scheduler from --print-commands)."""
    if study.pretrain.done and not os.path.isfile(study.pretrained_path):
        convert_checkpoint(os.path.join(study.pretrain.out_dir, "checkpoint_last.pth"), study.pretrained_path)


def run_study(study: Study, log: Callable[[str], None] = print, python: str = sys.executable) -> int:
    """Run every unfinished step; returns 0 if all cells finished, 1 if some failed."""
    _check_plan(study)
    lock = open(os.path.join(study.out, ".study.lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RuntimeError(f"another study is running in {study.out} (lock {lock.name} is held)") from None
    _install_signal_handlers()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    steps = [study.pretrain, *study.cells]
    todo = [c for c in steps if not c.done]
    # ETA from the cells this study has timed (pretraining excluded: it has its own budget)
    durations = [r["wall_s"] for c in study.cells if c.done and (r := cell_record(c)) and r.get("wall_s")]
    log(f"study {study.out}: {len(steps) - len(todo)}/{len(steps)} cells done (pretraining counts as one), "
        f"{len(todo)} left; budget {study.budget.name}, amp {study.budget.amp}, {study.budget.threads} thread(s)")
    _convert_if_needed(study)
    failed = []
    for i, cell in enumerate(todo):
        if cell is not study.pretrain and not os.path.isfile(study.pretrained_path):
            log(f"stopping: the pretrained backbone {study.pretrained_path} is missing (pretraining failed)")
            failed.extend(c.name for c in todo[i:])
            break
        left = len(todo) - i
        eta = f"ETA {_fmt_time(sum(durations) / len(durations) * left)}" if durations else "ETA after the first cell"
        log(f"[{len(steps) - left}/{len(steps)} done, {left} left, {eta}] {time.strftime('%H:%M:%S')} running {cell.name}")
        rc, wall = _run_cell(cell, python, env, log)
        if rc != 0 or not cell.done:
            log(f"  FAILED {cell.name}: exit status {rc} after {_fmt_time(wall)}; see {cell.out_dir}/stdout.log")
            failed.append(cell.name)
            continue
        if cell is study.pretrain:
            _convert_if_needed(study)
        else:
            durations.append(wall)
        _finish_record(cell, wall)
        with open(cell.results_path) as fh:
            m = json.load(fh)["metrics"]
        log(f"  done {cell.name} in {_fmt_time(wall)}: Rank-1 {100 * m['rank1']:.2f}, mAP {100 * m['mAP']:.2f}")
    log(f"study {study.out}: {sum(c.done for c in steps)}/{len(steps)} cells done"
        + (f"; {len(failed)} failed: {failed}" if failed else ""))
    return 1 if failed else 0
