"""One tiny trained run shared by the tests of the tools around a trained network (plots, ranked
results, extraction and search, export): `python -m reid.train` in a subprocess, as a user runs it,
on a few synthetic identities at 32x16, with an evaluation every epoch and re-ranking."""
import os
import subprocess
import sys

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

TINY_DATA = {"num_train_ids": 8, "num_test_ids": 6, "min_frames": 8, "max_frames": 16, "height": 32, "width": 16,
             "tracklets_per_camera": 2}


def env(**extra):
    """The environment of a user's shell: this checkout first on the path, one thread per process."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
            **extra}


def run_module(module, *args, timeout=600, check=True):
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"python -m {module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run directory, data root, completed process) of a 2-epoch training run."""
    root = tmp_path_factory.mktemp("synthetic")
    out = tmp_path_factory.mktemp("run")
    flags = ["--root", root, "--output-dir", out, "--height", "32", "--width", "16", "--stride", "2",
             "--num-identities", "4", "--num-instances", "2", "--num-workers", "0", "--epochs", "2",
             "--milestones", "1", "--eval-every", "1", "--rerank", "--test-batch-size", "4", "--threads", "1"]
    for k, v in TINY_DATA.items():
        flags += ["--dataset-option", f"{k}={v}"]
    proc = run_module("reid.train", *flags)
    return str(out), str(root), proc
