"""A real kill (SIGKILL of the training process) then ``--resume auto`` in a new process gives
the per-step losses of an uninterrupted run, bit for bit (CPU, one intra-op thread: with more
threads some CPU kernels reduce in a scheduling-dependent order, ~1e-7 apart run to run)."""
import json
import os
import signal
import subprocess
import sys
import time

import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def command(root, out, data, *extra):
    flags = ["--root", root, "--output-dir", str(out), "--height", "32", "--width", "16", "--stride", "2",
             "--num-identities", "4", "--num-instances", "2", "--num-workers", "0", "--epochs", "3",
             "--test-batch-size", "4", "--threads", "1", *extra]
    for k, v in data.items():
        flags += ["--dataset-option", f"{k}={v}"]
    return [sys.executable, "-m", "reid.train", *flags]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def losses(out):
    with open(os.path.join(out, "train_log.jsonl")) as fh:
        return [(r["step"], r["loss"]) for r in map(json.loads, fh)]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_root, tiny_data, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(command(tiny_root, full, tiny_data), cwd=REPO, env=env(), check=True,
                   capture_output=True, timeout=300)

    proc = subprocess.Popen(command(tiny_root, killed, tiny_data), cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoint_last.pth"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # somewhere after epoch 1's checkpoint, no clean-up
    proc.wait(timeout=60)
    assert last.exists(), "the run ended before writing its first checkpoint"
    stopped_at = torch.load(last, weights_only=True)["epoch"]
    assert stopped_at in (1, 2, 3)

    subprocess.run(command(tiny_root, killed, tiny_data, "--resume", "auto"), cwd=REPO, env=env(), check=True,
                   capture_output=True, timeout=300)
    assert losses(killed) == losses(full)
    assert f"resumed from {last} at epoch {stopped_at}" in (killed / "log.txt").read_text()
