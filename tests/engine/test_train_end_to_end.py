"""End to end on the real reid.data and reid.models: train, checkpoints, outputs, reid.test,
exact resume after a crash, the non-finite-loss guard."""
import glob
import json
import os

import pytest
import torch

from reid import test as reid_test
from reid.engine import trainer as trainer_mod
from reid.engine.checkpoint import load_checkpoint
from reid.engine.trainer import NonFiniteLossError, train
from reid.losses import ReIDLoss


def step_log(out):
    with open(os.path.join(out, "train_log.jsonl")) as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def trained(tiny_config, tmp_path_factory):
    """One tiny run (4 epochs) shared by the output checks below."""
    out = tmp_path_factory.mktemp("run")
    cfg = tiny_config(out, epochs=4, lr=1e-3, eval_every=2)
    result = train(cfg)
    return cfg, str(out), result


def test_loss_falls_and_metrics_are_computed(trained):
    _, out, result = trained
    records = step_log(out)
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    first = [r["loss"] for r in records if r["epoch"] == 0]
    last = [r["loss"] for r in records if r["epoch"] == 3]
    assert sum(last) / len(last) < sum(first) / len(first)
    m = result["metrics"]
    for key in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP"):
        assert 0.0 <= m[key] <= 1.0
    assert m["rank1"] <= m["rank5"] <= m["rank10"] <= m["rank20"]
    assert m["num_queries"] == result["num_query"] > 0


def test_run_directory_holds_everything_a_user_expects(trained):
    _, out, result = trained
    for name in ("checkpoint_last.pth", "model_best.pth", "results.json", "log.txt", "config.yaml", "train_log.jsonl"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert glob.glob(os.path.join(out, "tensorboard", "events.out.tfevents.*"))
    log = open(os.path.join(out, "log.txt")).read()
    assert "Final evaluation (epoch 4)" in log and "Rank-1" in log and "mINP" in log
    assert "Evaluation after epoch 2" in log  # periodic evaluation (eval_every=2)
    assert "clips/s" in log
    with open(os.path.join(out, "results.json")) as fh:
        saved = json.load(fh)
    assert saved["metrics"] == result["metrics"]
    assert saved["protocol"] and saved["dataset"] == "synthetic"


def test_checkpoints_load_with_weights_only_and_hold_the_full_state(trained):
    cfg, out, _ = trained
    last = torch.load(os.path.join(out, "checkpoint_last.pth"), weights_only=True)
    assert last["epoch"] == 4 and last["config"]["lr"] == cfg.lr and last["config"]["epochs"] == 4
    assert {"optimizer", "scheduler", "rng", "model", "num_classes"} <= set(last)
    best = load_checkpoint(os.path.join(out, "model_best.pth"))
    assert best["best"]["epoch"] in (2, 4)


def test_reid_test_reproduces_the_final_evaluation(trained, capsys):
    _, out, result = trained
    # the final evaluation was the best (or equal) if model_best is from epoch 4
    ckpt = os.path.join(out, "checkpoint_last.pth")
    assert reid_test.main(["--checkpoint", ckpt, "--num-workers", "0", "--rerank"]) == 0
    with open(os.path.join(out, "checkpoint_last.results.json")) as fh:
        tested = json.load(fh)
    for k in ("rank1", "mAP", "mINP"):
        assert tested["metrics"][k] == pytest.approx(result["metrics"][k], abs=1e-6)
    assert "rerank" in tested and 0 <= tested["rerank"]["metrics"]["mAP"] <= 1
    printed = capsys.readouterr().out
    assert "re-ranked" in printed and "protocol: synthetic" in printed


def test_reid_test_on_a_corrupted_checkpoint_is_a_clear_error(trained, tmp_path, capsys):
    _, out, _ = trained
    data = open(os.path.join(out, "model_best.pth"), "rb").read()
    bad = tmp_path / "model_best.pth"
    bad.write_bytes(data[:1000])
    assert reid_test.main(["--checkpoint", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"cannot read checkpoint {bad}: the file is corrupted or truncated" in err


class CrashingLoss(ReIDLoss):
    """Raises (like a kill) at the given call, counted over the whole process."""

    calls = 0
    crash_at = None
    nan_at = None

    def forward(self, logits, features, targets):
        type(self).calls += 1
        if type(self).calls == type(self).crash_at:
            raise KeyboardInterrupt("simulated kill")
        total, parts = super().forward(logits, features, targets)
        if type(self).calls == type(self).nan_at:
            total = total * float("nan")
        return total, parts


def test_kill_and_resume_gives_identical_losses(tiny_config, tmp_path, monkeypatch):
    full_dir, crash_dir = tmp_path / "full", tmp_path / "crash"
    train(tiny_config(full_dir, epochs=3))
    full = step_log(str(full_dir))
    steps_per_epoch = sum(1 for r in full if r["epoch"] == 0)
    assert steps_per_epoch >= 2

    monkeypatch.setattr(trainer_mod, "ReIDLoss", CrashingLoss)
    CrashingLoss.calls, CrashingLoss.crash_at = 0, steps_per_epoch + 2  # mid-way through epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(crash_dir, epochs=3))
    assert load_checkpoint(str(crash_dir / "checkpoint_last.pth"))["epoch"] == 1
    CrashingLoss.crash_at = None
    train(tiny_config(crash_dir, epochs=3, resume="auto"))
    resumed = step_log(str(crash_dir))
    # the interrupted epoch's partial records were dropped, then replayed exactly
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    a = torch.load(full_dir / "checkpoint_last.pth", weights_only=True)["model"]
    b = torch.load(crash_dir / "checkpoint_last.pth", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "ReIDLoss", CrashingLoss)
    CrashingLoss.calls, CrashingLoss.crash_at = 0, None
    probe = tiny_config(tmp_path / "probe", epochs=1)
    train(probe)
    steps_per_epoch = CrashingLoss.calls
    CrashingLoss.calls, CrashingLoss.nan_at = 0, steps_per_epoch + 1  # first step of epoch 2
    try:
        with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 2, step 1 \(global step \d+\)") as exc:
            train(tiny_config(tmp_path / "nan", epochs=3))
    finally:
        CrashingLoss.nan_at = None
    assert "checkpoint_last.pth" in str(exc.value)
    ck = load_checkpoint(str(tmp_path / "nan" / "checkpoint_last.pth"), for_resume=True)
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_reid_test_over_several_checkpoints_reports_their_mean(trained, tmp_path, capsys):
    _, out, _ = trained
    paths = []
    for split in ("split0", "split1"):
        (tmp_path / split).mkdir()
        dst = tmp_path / split / "model_best.pth"
        dst.write_bytes(open(os.path.join(out, "model_best.pth"), "rb").read())
        paths.append(str(dst))
    assert reid_test.main(["--checkpoint", *paths, "--num-workers", "0"]) == 0
    per_split = [json.load(open(tmp_path / s / "model_best.results.json")) for s in ("split0", "split1")]
    mean = json.load(open(tmp_path / "results_mean.json"))
    assert mean["num_splits"] == 2 and mean["checkpoints"] == paths
    assert mean["metrics"]["mAP"] == pytest.approx((per_split[0]["metrics"]["mAP"] + per_split[1]["metrics"]["mAP"]) / 2)
    assert "Mean over 2 checkpoints" in capsys.readouterr().out


def test_split_all_trains_one_model_per_split_and_reports_the_mean(tiny_config, tmp_path):
    result = train(tiny_config(tmp_path, split_id="all", epochs=1, iters_per_epoch=1))
    # the synthetic set has a single split; iLIDS-VID / PRID have 10 and take the same path
    assert result["num_splits"] == 1 and result["split_id"] == [0]
    assert (tmp_path / "split0" / "checkpoint_last.pth").is_file()
    saved = json.load(open(tmp_path / "results.json"))
    assert saved["metrics"]["mAP"] == pytest.approx(saved["splits"][0]["metrics"]["mAP"])


def test_bf16_autocast_trains_on_cpu(tiny_config, tmp_path):
    result = train(tiny_config(tmp_path, amp="bf16", epochs=1, iters_per_epoch=2))
    losses = [r["loss"] for r in step_log(str(tmp_path))]
    assert len(losses) == 2 and all(l == l and abs(l) < 1e3 for l in losses)  # finite
    assert 0 <= result["metrics"]["mAP"] <= 1


def test_fp16_without_cuda_is_refused_with_the_flag_named(tiny_config, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed on CUDA")
    with pytest.raises(ValueError, match="amp: got 'fp16', which needs a CUDA device"):
        train(tiny_config(tmp_path, amp="fp16"))


def test_training_stops_its_loader_workers_when_it_ends(tiny_config, tmp_path):
    """The trainer stops its data-loader workers itself: left to the garbage collector, their join
    happened during the plots' matplotlib import and cost the default run 10 s of waiting."""
    import gc
    import multiprocessing

    before = set(multiprocessing.active_children())
    gc.disable()  # no collection may do the trainer's work here
    try:
        train(tiny_config(tmp_path, epochs=1, num_workers=1))
        assert set(multiprocessing.active_children()) <= before
    finally:
        gc.enable()
