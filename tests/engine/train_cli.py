"""Running ``python -m reid.train`` / ``reid.test`` as a user would: a fresh process on the tiny
synthetic set of conftest.py (one intra-op thread, so losses are reproducible)."""
import os
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def tiny_flags(root, out, data, epochs=2, iters_per_epoch=2):
    flags = ["--root", str(root), "--output-dir", str(out), "--height", "32", "--width", "16", "--stride", "2",
             "--num-identities", "4", "--num-instances", "2", "--num-workers", "0", "--epochs", str(epochs),
             "--iters-per-epoch", str(iters_per_epoch), "--test-batch-size", "4", "--threads", "1", "--log-every", "1"]
    for k, v in data.items():
        flags += ["--dataset-option", f"{k}={v}"]
    return flags


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_module(module, args, timeout=300):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def run_code(code, timeout=300):
    """``python -c code`` (e.g. reid.train's main under a simulated fault)."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def snapshot(directory):
    """{relative path: bytes} of every file under ``directory``: to show that nothing changed."""
    out = {}
    for base, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(base, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, directory)] = fh.read()
    return out
