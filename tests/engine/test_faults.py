"""Faults as a user meets them on the command line (each CLI in a fresh process): a clear message
and a non-zero exit status, never a silent wrong result, a raw traceback or a wasted run.

The tests for the same faults through the Python API are next to the code they specify
(test_weights_files.py, test_config_checkpoint.py, test_evaluator.py, tests/data/test_data_faults.py).
"""
import os
import subprocess
import sys

import pytest
import torch

from bad_files import flip_byte_in_largest_tensor, truncate, write_pickle_payload

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from data_fakes import make_folder, write_image  # noqa: E402  (the miniature datasets of tests/data)

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def run(*argv, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def train_flags(root, data, out, *extra):
    flags = ["--root", root, "--output-dir", str(out), "--height", "32", "--width", "16", "--stride", "2",
             "--num-identities", "4", "--num-instances", "2", "--num-workers", "0", "--epochs", "1",
             "--test-batch-size", "4", "--threads", "1", *extra]
    for k, v in data.items():
        flags += ["--dataset-option", f"{k}={v}"]
    return flags


def refused(proc, code=1):
    """The run stopped with `code` and a one-message error (no traceback); returns stderr."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


# ---------------------------------------------------------------- item 1: corrupted checkpoint
def test_reid_test_refuses_a_checkpoint_with_a_flipped_byte(tiny_config, tmp_path):
    from reid.engine.checkpoint import FORMAT_VERSION, load_checkpoint
    from reid.engine.builders import build_network

    cfg = tiny_config(tmp_path, arch="c2d_resnet18")
    model = build_network(cfg, num_classes=8)
    path = str(tmp_path / "model_best.pth")
    torch.save({"format_version": FORMAT_VERSION, "model": model.state_dict(), "epoch": 4,
                "config": {**cfg.to_dict(), "split_id": 0}, "num_classes": 8}, path)
    load_checkpoint(path)  # intact: accepted
    record = flip_byte_in_largest_tensor(path)
    err = refused(run("-m", "reid.test", "--checkpoint", path, "--num-workers", "0"))
    assert err.startswith(f"error: checkpoint {path} is corrupted: record '{record}' fails its integrity check")
    assert not os.path.exists(str(tmp_path / "model_best.results.json"))  # no result from bad weights


# ---------------------------------------------------------------- items 1 and 12: bad --pretrained files
@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    from reid.models.resnet import resnet18

    path = str(tmp_path_factory.mktemp("imagenet") / "resnet18.pth")
    torch.save(resnet18().state_dict(), path)
    return path


@pytest.mark.parametrize("fault", ["flipped byte", "truncated", "pickle payload"])
def test_reid_train_refuses_a_bad_pretrained_file_by_name(fault, resnet18_weights, tiny_root, tiny_data, tmp_path):
    bad, marker = str(tmp_path / "bad.pth"), str(tmp_path / "payload-ran")
    if fault == "pickle payload":
        write_pickle_payload(bad, marker)
    else:
        with open(resnet18_weights, "rb") as src, open(bad, "wb") as dst:
            dst.write(src.read())
        flip_byte_in_largest_tensor(bad) if fault == "flipped byte" else truncate(bad)
    out = tmp_path / "run"
    err = refused(run("-m", "reid.train", *train_flags(tiny_root, tiny_data, out, "--arch", "c2d_resnet18",
                                                      "--pretrained", bad)))
    expected = {
        "flipped byte": f"error: pretrained weights file {bad} is corrupted: record ",
        "truncated": f"error: cannot read pretrained weights file {bad}: the file is corrupted or truncated",
        "pickle payload": f"error: pretrained weights file {bad} is not a valid weights file",
    }[fault]
    assert err.startswith(expected), err
    assert not os.path.exists(marker)
    assert not os.path.exists(out / "checkpoint_last.pth")


# ---------------------------------------------------------------- item 6: settings silently accepted
def test_a_split_index_the_dataset_does_not_have_stops_the_run_before_training(tiny_root, tiny_data, tmp_path):
    out = tmp_path / "run"
    err = refused(run("-m", "reid.train", *train_flags(tiny_root, tiny_data, out, "--split-id", "5")))
    assert err.startswith("error: split_id must be in [0, 0] for synthetic (1 split), got 5")
    assert not os.path.exists(out / "train_log.jsonl")


@pytest.mark.parametrize("argv, misspelt", [
    (["-m", "reid.train", "--num-instance", "3"], "--num-instance 3"),
    (["-m", "reid.test", "--checkpoint", "x.pth", "--num-worker", "0"], "--num-worker 0"),
    (["-m", "reid.data", "--dataset", "folder", "--root", "/nonexistent", "--verif"], "--verif"),
    (["-m", "reid.data.contact_sheet", "--root", "/nonexistent", "--fram", "4"], "--fram 4"),
    (["-m", "reid.models", "--back", "resnet18", "--no-flops"], "--back resnet18"),
    (["bench/bench_apm.py", "--rep", "1", "--device", "cuda"], "--rep 1"),
])
def test_no_command_line_accepts_a_prefix_of_a_flag(argv, misspelt):
    err = refused(run(*argv, timeout=120), code=2)
    assert f"unrecognized arguments: {misspelt}" in err


def test_every_argument_parser_of_the_project_turns_prefix_matching_off():
    """The same guarantee for the parsers the test above does not run (and any added later)."""
    import ast
    import glob

    sources = glob.glob(os.path.join(REPO, "reid", "**", "*.py"), recursive=True)
    sources += glob.glob(os.path.join(REPO, "bench", "*.py")) + glob.glob(os.path.join(REPO, "scripts", "*.py"))
    parsers = []
    for path in sources:
        with open(path) as fh:
            tree = ast.parse(fh.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "ArgumentParser":
                flags = {k.arg: k.value for k in node.keywords}
                ok = isinstance(flags.get("allow_abbrev"), ast.Constant) and flags["allow_abbrev"].value is False
                parsers.append((os.path.relpath(path, REPO), node.lineno, ok))
    assert len(parsers) >= 5, parsers
    assert [p for p in parsers if not p[2]] == []


def test_frames_directly_under_identity_folders_fail_verification(tmp_path):
    root = make_folder(str(tmp_path), {"train": [(1, "c0", 2), (2, "c1", 2)], "query": [(3, "c0", 2)],
                                       "gallery": [(3, "c1", 2)]})
    loose = write_image(os.path.join(root, "gallery", "4", "000.jpg"))
    err = refused(run("-m", "reid.data", "--dataset", "folder", "--root", root, "--verify"), code=2)
    assert f"frame(s) lie directly in the identity folder {os.path.dirname(loose)}" in err and loose in err
    assert "gallery/<pid>/<tracklet>/<frames>" in err


# ---------------------------------------------------------------- item 12: messages, not tracebacks
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cuda_on_a_machine_without_cuda_is_one_message(tmp_path):
    err = refused(run("-m", "reid.train", "--device", "cuda", "--output-dir", str(tmp_path / "run")), code=2)
    assert "error: device: got 'cuda', but no CUDA device is available" in err
    assert not os.path.exists(tmp_path / "run")
    err = refused(run("-m", "reid.test", "--checkpoint", str(tmp_path / "any.pth"), "--device", "cuda"))
    assert err.startswith("error: device: got 'cuda', but no CUDA device is available")


def test_a_dataset_options_list_in_yaml_with_a_flag_is_a_config_error(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("dataset_options: [1, 2]\n")
    err = refused(run("-m", "reid.train", "--config", str(config), "--dataset-option", "seed=1"), code=2)
    assert f"error: {config}: dataset_options: got [1, 2], expected a mapping of option name to value" in err


# ---------------------------------------------------------------- item 13: empty query split
def test_an_empty_query_split_stops_the_run_before_training(tmp_path):
    root = make_folder(str(tmp_path / "data"), {"train": [(p, f"c{c}", 4) for p in range(4) for c in (0, 1)],
                                                "query": [], "gallery": [(9, "c1", 3)]})
    out = tmp_path / "run"
    proc = run("-m", "reid.train", "--dataset", "folder", "--root", root, "--output-dir", str(out),
               "--num-identities", "2", "--num-instances", "2", "--num-workers", "0", "--epochs", "1")
    err = refused(proc)
    assert err.startswith(f"error: folder: the query split under {root} has no tracklet with frames")
    assert not os.path.exists(out / "train_log.jsonl") and not os.path.exists(out / "checkpoint_last.pth")
