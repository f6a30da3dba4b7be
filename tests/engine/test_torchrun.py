"""Two processes under torchrun on CPU (gloo): DDP training, rank-0-only outputs, evaluation
features gathered across ranks (the 2-process test gives the single-process numbers)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from reid import test as reid_test

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def tiny_flags(root, out, data):
    flags = ["--root", root, "--output-dir", str(out), "--height", "32", "--width", "16", "--stride", "2",
             "--num-identities", "4", "--num-instances", "2", "--num-workers", "0", "--epochs", "2",
             "--test-batch-size", "4", "--log-every", "1"]
    for k, v in data.items():
        flags += ["--dataset-option", f"{k}={v}"]
    return flags


def torchrun(module, args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_process_gloo_training_and_gathered_evaluation(tiny_root, tiny_data, tmp_path, capsys):
    out = tmp_path / "ddp"
    proc = torchrun("reid.train", tiny_flags(tiny_root, out, tiny_data))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "2 process(es) on cpu (gloo)" in log
    assert "Final evaluation (epoch 2)" in log
    # rank 0 alone writes: one log, one step record per global step, one event file
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    assert len(list((out / "tensorboard").iterdir())) == 1
    ddp_result = json.loads((out / "results.json").read_text())

    # evaluating the same checkpoint in one process gives the same numbers: the 2-rank feature
    # extraction covered every tracklet once and put each feature back in its place
    assert reid_test.main(["--checkpoint", str(out / "checkpoint_last.pth"), "--num-workers", "0"]) == 0
    single = json.loads((out / "checkpoint_last.results.json").read_text())
    assert single["num_query"] == ddp_result["num_query"]
    for k in ("rank1", "rank5", "mAP", "mINP"):
        assert single["metrics"][k] == pytest.approx(ddp_result["metrics"][k], abs=1e-5)


def test_torchrun_reports_bad_configuration_from_every_rank(tiny_root, tiny_data, tmp_path):
    # 3 identities per batch cannot be split over 2 ranks as whole identities
    flags = tiny_flags(tiny_root, tmp_path / "bad", tiny_data)
    flags[flags.index("--num-identities") + 1] = "3"
    proc = torchrun("reid.train", flags, timeout=120)
    assert proc.returncode != 0
    assert "num_identities: got 3, which does not split evenly across 2 processes" in proc.stderr


LEAVE_GROUP = """
import gc, os, torch, torch.distributed as dist
from reid.engine import distributed as du
os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"])
dist.init_process_group("gloo")
class Run:  # a finished run that still points at itself, as a trainer with hooks does
    pass
run = Run()
run.model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
run.self = run
del run
du.cleanup()
assert not dist.is_initialized()
print(sum(isinstance(o, torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects()))
"""


def test_leaving_the_group_first_frees_the_models_that_still_hold_it():
    # a DDP model left in a reference cycle would otherwise outlive destroy_process_group() and
    # be torn down during interpreter shutdown, which aborted a loaded 2-process run once
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PORT": port, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", LEAVE_GROUP], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0"]
