"""One tiny trained run shared by the tests of the tools around a trained network (plots, ranked
results, extraction and search, export): `python -m reid.train` in a subprocess, as a user runs it,
on a few synthetic identities at 32x16, with an evaluation every epoch and re-ranking."""
import pytest
from tool_helpers import TINY_DATA, run_module


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
