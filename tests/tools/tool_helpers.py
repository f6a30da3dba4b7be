"""Helpers of the tools' tests: run a module of this checkout as a user would, in a subprocess."""
import os
import subprocess
import sys

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
