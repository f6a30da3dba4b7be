"""The study runner as a user runs it (fresh subprocesses): a toy grid of 2 networks x 2 levels x
1 seed, a couple of steps per cell, on a tiny synthetic set. Finished cells are never rerun, a
cell killed mid-way resumes from its checkpoint, --print-commands lists only unfinished cells."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = ["--networks", "c2d", "p3d_c", "--levels", "0", "1", "--seeds", "0", "--epochs", "1", "--milestones",
       "--pretrain-epochs", "1", "--pretrain-milestones", "--iters-per-epoch", "2", "--threads", "1",
       "--num-workers", "0", "--amp", "none", "--height", "32", "--width", "16", "--num-identities", "4",
       "--num-instances", "2"]
for _k, _v in {"num_train_ids": 6, "num_test_ids": 3, "height": 32, "width": 16, "min_frames": 6, "max_frames": 8}.items():
    TOY += ["--dataset-option", f"{_k}={_v}"]
TOY += ["--pretrain-option", "num_train_ids=6", "--pretrain-option", "num_test_ids=3"]


def study(out, *extra):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               AP3D_CACHE_DIR=os.path.join(os.path.dirname(out), "cache"))
    return subprocess.run([sys.executable, "-m", "reid.study", "misalignment", "--out", out, *TOY, *extra],
                          capture_output=True, text=True, env=env, timeout=900)


def cell_dir(out, arch, level):
    return os.path.join(out, "cells", f"{arch}_resnet18", f"mis{level}", "seed0")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("study") / "out")
    run = study(out)
    assert run.returncode == 0, run.stdout + run.stderr
    return out, run.stdout


def test_a_study_pretrains_once_runs_every_cell_and_aggregates(finished):
    out, stdout = finished
    assert os.path.isfile(os.path.join(out, "pretrain", "backbone2d.pth"))
    assert "[4/5 done, 1 left, ETA" in stdout and "5/5 cells done" in stdout
    for arch in ("c2d", "p3d_c"):
        for level in (0, 1):
            d = cell_dir(out, arch, level)
            assert os.path.isfile(os.path.join(d, "results.json"))
            record = json.load(open(os.path.join(d, "study_cell.json")))
            assert record["temporal_weights"]["num_blocks"] == (0 if arch == "c2d" else 2)
            config = open(os.path.join(d, "config.yaml")).read()
            assert "backbone2d.pth" in config and "amp: none" in config
    summary = json.load(open(os.path.join(out, "misalignment.json")))
    assert [(r["network"], r["misalignment"], r["n"]) for r in summary["rows"]] == [
        ("c2d_resnet18", 0.0, 1), ("c2d_resnet18", 1.0, 1), ("p3d_c_resnet18", 0.0, 1), ("p3d_c_resnet18", 1.0, 1)]
    assert os.path.getsize(os.path.join(out, "misalignment_map.png")) > 0


def test_finished_cells_are_skipped_and_a_partial_cell_resumes(finished):
    out, _ = finished
    partial = cell_dir(out, "p3d_c", 1)
    others = [cell_dir(out, a, lv) for a in ("c2d", "p3d_c") for lv in (0, 1) if (a, lv) != ("p3d_c", 1)]
    before = {d: os.path.getmtime(os.path.join(d, "results.json")) for d in others}
    # a cell killed after its checkpoint, before its results: what a SIGKILL leaves behind
    os.remove(os.path.join(partial, "results.json"))
    os.remove(os.path.join(partial, "study_cell.json"))
    listed = study(out, "--print-commands")
    assert listed.returncode == 0
    train_lines = [line for line in listed.stdout.splitlines() if "reid.train" in line]
    assert len(train_lines) == 1 and train_lines[0].endswith(partial)
    assert "--resume auto" in train_lines[0]

    rerun = study(out)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "4/5 cells done" in rerun.stdout and "resuming p3d_c_resnet18/mis1/seed0" in rerun.stdout
    assert "running pretrain" not in rerun.stdout
    assert "resumed from" in open(os.path.join(partial, "stdout.log")).read()
    assert os.path.isfile(os.path.join(partial, "results.json"))
    assert before == {d: os.path.getmtime(os.path.join(d, "results.json")) for d in others}
    assert study(out, "--print-commands").stdout.strip() == "# every cell is finished"


def test_temporal_ablation_evaluates_each_temporal_cell_once_and_fills_the_table(finished):
    out, _ = finished
    run = study(out, "--aggregate-only", "--ablate-temporal")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("[ablation ") == 2  # the two P3D-C cells; C2D has nothing temporal
    for level in (0, 1):
        rec = json.load(open(os.path.join(cell_dir(out, "p3d_c", level), "temporal_ablation.json")))
        assert rec["zeroed_tensors"] == 2 and 0 <= rec["temporal_zeroed"]["mAP"] <= 1
        assert rec["full"] == {k: v for k, v in json.load(open(os.path.join(cell_dir(out, "p3d_c", level),
                                                                               "results.json")))["metrics"].items()
                               if k in ("rank1", "mAP")}
        assert not os.path.exists(os.path.join(cell_dir(out, "c2d", level), "temporal_ablation.json"))
    rows = {(r["network"], r["misalignment"]): r for r in json.load(open(os.path.join(out, "misalignment.json")))["rows"]}
    assert rows["p3d_c_resnet18", 1.0]["temporal_ablation_mAP_drop"]["n"] == 1
    assert rows["c2d_resnet18", 1.0]["temporal_ablation_mAP_drop"] is None
    again = study(out, "--aggregate-only", "--ablate-temporal")
    assert again.returncode == 0 and "[ablation " not in again.stdout  # done once per cell


def test_a_study_directory_refuses_a_different_budget(finished):
    out, _ = finished
    run = study(out, "--epochs", "3")
    assert run.returncode == 1 and "another plan" in run.stderr and "epochs" in run.stderr


def test_sigterm_stops_the_running_cell_with_the_study(tmp_path):
    out = str(tmp_path / "out")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               AP3D_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.Popen([sys.executable, "-m", "reid.study", "misalignment", "--out", out, *TOY],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    log = os.path.join(out, "pretrain", "stdout.log")
    deadline = time.monotonic() + 300
    while not os.path.isfile(log) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert os.path.isfile(log), "the study never started its first cell"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    # the cell (reid.train writing into pretrain/) is gone too, not orphaned
    alive = subprocess.run(["pgrep", "-f", "--", f"--output-dir {out}/pretrain"], capture_output=True, text=True)
    assert alive.returncode == 1 and alive.stdout == "", alive   # 1: no process matched
