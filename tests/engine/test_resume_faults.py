"""Resume and checkpoint faults, met as a user meets them (``python -m reid.train`` in a fresh
process): nothing of a run changes before its resume is accepted, a finished run is never
relabelled, nothing is left behind or logged twice after a kill, and a full disk or a checkpoint
that does not fit the network is a message saying what is intact and what to do."""
import json
import os

import pytest
import torch

from train_cli import run_code, run_module, snapshot, tiny_flags

import reid.engine.fileio as fileio
from reid.engine.checkpoint import load_checkpoint
from reid.engine.trainer import OutputWriteError, train


def records(out):
    with open(os.path.join(out, "train_log.jsonl")) as fh:
        return [json.loads(line) for line in fh]


def temporaries(out):
    return sorted(name for name in os.listdir(out) if name.endswith(".tmp"))


@pytest.fixture(scope="module")
def finished(tiny_root, tiny_data, tmp_path_factory):
    """A finished 4-epoch run, evaluated every 2 epochs."""
    out = tmp_path_factory.mktemp("finished")
    proc = run_module("reid.train", [*tiny_flags(tiny_root, out, tiny_data, epochs=4, iters_per_epoch=1),
                                     "--eval-every", "2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def resume(root, out, data, *extra, epochs=4):
    return run_module("reid.train", [*tiny_flags(root, out, data, epochs=epochs, iters_per_epoch=1),
                                     "--eval-every", "2", "--resume", "auto", *extra])


# --- a resume that is refused changes nothing (issue 10: items 5 and 9) ---------------------
def test_resuming_a_finished_run_with_fewer_epochs_is_refused_and_changes_nothing(finished, tiny_root, tiny_data):
    before = snapshot(finished)
    proc = resume(tiny_root, finished, tiny_data, epochs=2)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (f"error: cannot resume from {finished / 'checkpoint_last.pth'}: that run already trained 4 epochs, "
            "more than --epochs 2; nothing was changed.") in proc.stderr
    assert "python -m reid.test --checkpoint" in proc.stderr
    assert snapshot(finished) == before  # model_best, results, config.yaml, logs: byte for byte


def test_a_resume_refused_for_another_set_up_does_not_touch_config_yaml(finished, tiny_root, tiny_data):
    before = snapshot(finished)
    proc = resume(tiny_root, finished, tiny_data, "--optimizer", "sgd")
    assert proc.returncode == 1 and "optimizer: checkpoint 'adam' vs now 'sgd'" in proc.stderr
    assert snapshot(finished) == before


def test_resuming_a_finished_run_with_the_same_epochs_only_evaluates_it(finished, tiny_root, tiny_data):
    best_before = load_checkpoint(str(finished / "model_best.pth"))
    steps_before = records(finished)
    proc = resume(tiny_root, finished, tiny_data, epochs=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing left to train, evaluating it" in (finished / "log.txt").read_text()
    assert records(finished) == steps_before
    best = load_checkpoint(str(finished / "model_best.pth"))
    assert best["epoch"] == best["best"]["epoch"] == best_before["best"]["epoch"]
    assert all(torch.equal(best["model"][k], best_before["model"][k]) for k in best["model"])


# --- a checkpoint whose weights do not fit the network (item 11) -----------------------------
def drop_classifier(model):
    return {k: v for k, v in model.items() if not k.startswith("classifier.")}


def one_wrong_shape(model):
    return {**model, "bn.weight": torch.ones(7)}


def another_architecture(model):
    from reid.models import build_model

    return build_model("c2d_resnet18", num_classes=model["classifier.weight"].shape[0]).state_dict()


def damaged_checkpoint(finished, path, damage):
    ck = torch.load(finished / "checkpoint_last.pth", weights_only=True)
    ck["model"] = damage(ck["model"])
    torch.save(ck, path)
    return path


def test_resuming_another_architectures_weights_is_a_clear_error(finished, tiny_root, tiny_data, tmp_path):
    bad = damaged_checkpoint(finished, tmp_path / "bad.pth", another_architecture)
    out = tmp_path / "run"
    proc = run_module("reid.train", [*tiny_flags(tiny_root, out, tiny_data, epochs=5, iters_per_epoch=1),
                                     "--resume", str(bad)])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"error: checkpoint {bad}: its weights do not fit ap3d_resnet18 with 8 classes (" in proc.stderr
    assert "missing: layer2.0.conv2.APM.semantic_mapping.weight" in proc.stderr
    assert "unexpected: layer2.0.conv2.weight" in proc.stderr
    assert not out.exists() or snapshot(out) == {}  # no file of the new run was written


@pytest.mark.parametrize("damage, words", [
    (drop_classifier, "2 missing: classifier.weight, classifier.bias)"),
    (one_wrong_shape, "1 of the wrong shape: bn.weight [7] (the model's: [512]))"),
], ids=["missing-classifier", "wrong-shape"])
def test_resuming_weights_that_do_not_fit_names_the_tensors(finished, tiny_root, tiny_data, tmp_path, capsys,
                                                            damage, words):
    from reid import train as reid_train

    bad = damaged_checkpoint(finished, tmp_path / "bad.pth", damage)
    argv = [*tiny_flags(tiny_root, tmp_path / "run", tiny_data, epochs=5, iters_per_epoch=1), "--resume", str(bad)]
    assert reid_train.main(argv) == 1
    assert capsys.readouterr().err == f"error: checkpoint {bad}: its weights do not fit ap3d_resnet18 with 8 classes ({words}\n"


# --- a kill during the first checkpoint write (items 7 and 8) ---------------------------------
KILLED_IN_FIRST_CHECKPOINT = """
import os, sys, torch
def killed(obj, fh, *args, **kwargs):
    fh.write(b"partial checkpoint" * 1000); fh.flush()
    os._exit(9)  # like SIGKILL: no clean-up runs
torch.save = killed
from reid.train import main
main(sys.argv[1:])
"""


def test_a_run_killed_before_its_first_checkpoint_restarts_clean(tiny_root, tiny_data, tmp_path):
    out = tmp_path / "run"
    flags = tiny_flags(tiny_root, out, tiny_data, epochs=2, iters_per_epoch=2)
    killed = run_code(KILLED_IN_FIRST_CHECKPOINT.replace("sys.argv[1:]", repr(flags)))
    assert killed.returncode == 9
    assert len(temporaries(out)) == 1 and temporaries(out)[0].startswith(".checkpoint_last.pth.")
    first_attempt = records(out)
    assert [r["step"] for r in first_attempt] == [1, 2] and not (out / "checkpoint_last.pth").exists()

    proc = run_module("reid.train", [*flags, "--resume", "auto"])  # no checkpoint: a fresh start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert temporaries(out) == []
    log = (out / "log.txt").read_text()
    assert "left by a write that was interrupted" in log
    fresh = records(out)
    assert [r["step"] for r in fresh] == [1, 2, 3, 4]  # not 1, 2, 1, 2, 3, 4
    moved = [name for name in os.listdir(out) if name.startswith("train_log.previous-")]
    assert len(moved) == 1 and f"moved to {out / moved[0]}" in log
    with open(out / moved[0]) as fh:
        assert [json.loads(line) for line in fh] == first_attempt  # kept, not lost
    assert [r["loss"] for r in fresh[:2]] == [r["loss"] for r in first_attempt]  # the same seeded start


def test_resume_drops_step_records_after_the_checkpoint_and_a_torn_last_line(tiny_config, tmp_path):
    cfg = tiny_config(tmp_path, epochs=1, iters_per_epoch=2)
    train(cfg)
    kept = records(tmp_path)
    with open(tmp_path / "train_log.jsonl", "a") as fh:  # what a kill mid-epoch-2 leaves behind
        fh.write(json.dumps({**kept[-1], "epoch": 1, "step": 3}) + "\n" + '{"epoch": 1, "step": 4, "lo')
    train(tiny_config(tmp_path, epochs=2, iters_per_epoch=2, resume="auto"))
    resumed = records(tmp_path)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4] and resumed[:2] == kept


# --- the disk fills up or the directory becomes unwritable during a checkpoint (item 10) ------
DISK_FULL_AT_SECOND_CHECKPOINT = """
import errno, sys, torch
real_save, calls = torch.save, []
class FullDisk:
    def __init__(self, fh): self.fh = fh
    def write(self, data): raise OSError(errno.ENOSPC, "No space left on device")
    def __getattr__(self, name): return getattr(self.fh, name)
def save(obj, fh, *args, **kwargs):
    calls.append(1)
    return real_save(obj, FullDisk(fh) if len(calls) == 2 else fh, *args, **kwargs)
torch.save = save
from reid.train import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_during_a_checkpoint_names_the_file_and_the_intact_checkpoint(tiny_root, tiny_data, tmp_path):
    out = tmp_path / "run"
    flags = tiny_flags(tiny_root, out, tiny_data, epochs=2, iters_per_epoch=1)
    proc = run_code(DISK_FULL_AT_SECOND_CHECKPOINT.replace("sys.argv[1:]", repr(flags)))
    last = out / "checkpoint_last.pth"
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (f"error: could not write {last} ([Errno 28] No space left on device). The last good checkpoint, "
            f"{last} (epoch 1), is intact. Free space or make {out} writable, then continue from epoch 1 with "
            "the same command plus --resume auto.") in proc.stderr
    assert load_checkpoint(str(last), for_resume=True)["epoch"] == 1 and temporaries(out) == []

    proc = run_module("reid.train", [*flags, "--resume", "auto"])  # what the message says to do
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_checkpoint(str(last))["epoch"] == 2 and (out / "results.json").is_file()


@pytest.mark.parametrize("failing_write, intact", [(1, None), (2, 1)])
def test_an_unwritable_directory_during_a_checkpoint_says_what_is_intact(tiny_config, tmp_path, monkeypatch,
                                                                         failing_write, intact):
    real_mkstemp, writes = fileio.tempfile.mkstemp, []

    def mkstemp(*args, prefix="", **kwargs):
        if prefix.startswith(".checkpoint_last.pth."):
            writes.append(prefix)
            if len(writes) == failing_write:
                raise PermissionError(13, "Permission denied", kwargs.get("dir"))
        return real_mkstemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(fileio.tempfile, "mkstemp", mkstemp)
    with pytest.raises(OutputWriteError) as info:
        train(tiny_config(tmp_path, epochs=2, iters_per_epoch=1))
    message = str(info.value)
    assert message.startswith(f"could not write {tmp_path / 'checkpoint_last.pth'} ([Errno 13] Permission denied")
    if intact is None:
        assert "No checkpoint of this run exists yet" in message and "start the run again" in message
    else:
        assert f"(epoch {intact}), is intact" in message and "--resume auto" in message
        assert load_checkpoint(str(tmp_path / "checkpoint_last.pth"))["epoch"] == intact
