"""Config (defaults < YAML < flags), checkpoints (atomic, weights_only, clear errors), schedule."""
import glob
import os

import pytest
import torch
import yaml

from reid.engine.checkpoint import (
    CheckpointError,
    atomic_save,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
)
from reid.engine.config import Config, ConfigError, build_parser, config_from_dict, load_config
from reid.engine.optim import WarmupMultiStepLR, build_optimizer

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "configs")


def parse(argv):
    return load_config(build_parser("test").parse_args(argv))


# --- config ---------------------------------------------------------------------------------
def test_defaults_are_the_small_cpu_run():
    cfg = parse([])
    assert (cfg.dataset, cfg.arch, cfg.height, cfg.width) == ("synthetic", "ap3d_resnet18", 128, 64)
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.margin) == ("adam", 3e-4, 5e-4, 0.3)


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"height": 256, "width": 128}, "lr": "3e-4", "epochs": 3}))
    cfg = parse(["--config", str(path), "--epochs", "5", "--milestones", "2", "4", "--rerank",
                 "--dataset-option", "num_train_ids=6", "--split-id", "all"])
    assert (cfg.height, cfg.width, cfg.lr) == (256, 128, 3e-4)
    assert cfg.epochs == 5 and cfg.milestones == [2, 4] and cfg.rerank is True
    assert cfg.dataset_options == {"num_train_ids": 6} and cfg.split_id == "all"


def test_unknown_yaml_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("num_instance: 4\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'num_instance' \(did you mean 'num_instances'\?\)"):
        parse(["--config", str(path)])


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--num-instances", "1"], "num_instances: got 1"),
        (["--amp", "fp32"], "amp: got 'fp32'"),
        (["--milestones", "5", "3"], "milestones"),
        (["--pretrained", "/nonexistent/r18.pth"], "pretrained: got '/nonexistent/r18.pth'"),
    ],
)
def test_bad_values_are_named(argv, msg):
    with pytest.raises(ConfigError, match=msg):
        parse(argv)


def test_a_dataset_options_list_is_a_config_error_even_with_a_flag_to_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset_options: [1, 2]\n")
    for argv in (["--config", str(path)], ["--config", str(path), "--dataset-option", "seed=3"]):
        with pytest.raises(ConfigError, match=r"c.yaml: dataset_options: got \[1, 2\], expected a mapping"):
            parse(argv)


def test_flags_are_never_prefix_matched(capsys):
    with pytest.raises(SystemExit):
        parse(["--num-instance", "3"])  # not --num-instances
    assert "unrecognized arguments: --num-instance 3" in capsys.readouterr().err
    assert parse(["--num-instances", "3"]).num_instances == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_cuda_without_cuda_is_a_config_error():
    with pytest.raises(ConfigError, match="device: got 'cuda', but no CUDA device is available"):
        parse(["--device", "cuda"])


def test_missing_config_file_is_named():
    with pytest.raises(ConfigError, match="file not found: /no/such.yaml"):
        parse(["--config", "/no/such.yaml"])


@pytest.mark.parametrize("name", ["mars", "duke", "ilidsvid", "prid"])
def test_paper_configs_hold_the_release_settings(name):
    cfg = parse(["--config", os.path.join(CONFIGS, f"{name}.yaml")])
    assert cfg.dataset == name and cfg.arch == "ap3d_resnet50"
    assert (cfg.seq_len, cfg.stride, cfg.height, cfg.width) == (4, 8, 256, 128)
    assert (cfg.num_identities, cfg.num_instances) == (8, 4)
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay) == ("adam", 3e-4, 5e-4)
    assert (cfg.epochs, cfg.milestones, cfg.gamma) == (240, [60, 120, 180], 0.1)
    assert (cfg.ce_weight, cfg.triplet_weight, cfg.margin, cfg.triplet_distance) == (1.0, 1.0, 0.3, "cosine")
    assert cfg.test_clip_len == 32


def test_config_round_trips_through_a_dict():
    cfg = parse(["--epochs", "7"])
    assert config_from_dict(cfg.to_dict()) == cfg


# --- checkpoints ------------------------------------------------------------------------------
def minimal_checkpoint():
    return {"format_version": 1, "model": {"w": torch.ones(2)}, "epoch": 3, "config": Config().to_dict(),
            "num_classes": 5, "optimizer": {}, "scheduler": {}, "rng": capture_rng_state()}


def test_atomic_save_roundtrip_with_weights_only(tmp_path):
    path = tmp_path / "ck.pth"
    atomic_save(minimal_checkpoint(), str(path))
    ck = load_checkpoint(str(path), for_resume=True)
    assert ck["epoch"] == 3 and torch.equal(ck["model"]["w"], torch.ones(2))
    torch.load(str(path), weights_only=True)  # plain torch can open it safely too
    assert glob.glob(str(tmp_path / ".*tmp")) == []  # no temporary file left behind


def test_failed_save_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "ck.pth"
    atomic_save(minimal_checkpoint(), str(path))
    before = path.read_bytes()

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        atomic_save({"x": Unpicklable()}, str(path))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]


def test_corrupted_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "ck.pth"
    atomic_save(minimal_checkpoint(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated, as after a crash without atomic writes
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*ck.pth: the file is corrupted or truncated"):
        load_checkpoint(str(path))
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(str(path))


def test_a_byte_flipped_inside_a_tensor_is_refused_by_name(tmp_path):
    from bad_files import flip_byte_in_largest_tensor

    path = tmp_path / "model_best.pth"
    ck = minimal_checkpoint()
    ck["model"] = {"w": torch.randn(1000)}
    atomic_save(ck, str(path))
    load_checkpoint(str(path))
    record = flip_byte_in_largest_tensor(str(path))
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is corrupted: record '{record}' fails its integrity"):
        load_checkpoint(str(path))


def test_a_pickle_payload_checkpoint_is_refused_without_running_it(tmp_path):
    from bad_files import write_pickle_payload

    path, marker = tmp_path / "ck.pth", tmp_path / "ran"
    write_pickle_payload(str(path), str(marker))
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is not a valid weights file"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_missing_and_foreign_checkpoints_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pth"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="lacks format_version, model, epoch, config, num_classes"):
        load_checkpoint(str(foreign))
    weights_only_ck = minimal_checkpoint()
    for k in ("optimizer", "scheduler", "rng"):
        del weights_only_ck[k]
    torch.save(weights_only_ck, tmp_path / "best.pth")
    load_checkpoint(str(tmp_path / "best.pth"))  # fine for testing
    with pytest.raises(CheckpointError, match="resume from checkpoint_last.pth"):
        load_checkpoint(str(tmp_path / "best.pth"), for_resume=True)


def test_rng_state_restores_every_generator(tmp_path):
    import random

    import numpy as np

    state = capture_rng_state()
    path = tmp_path / "rng.pth"
    atomic_save({"rng": state}, str(path))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(torch.load(path, weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and (expected[1] == got[1]).all() and expected[2] == got[2]


# --- schedule ---------------------------------------------------------------------------------
def lrs(sched, n):
    out = []
    for _ in range(n):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


def test_release_schedule_and_warmup():
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], "adam", 3e-4, 5e-4)
    got = lrs(WarmupMultiStepLR(opt, [60, 120, 180], 0.1), 240)
    assert got[0] == got[59] == pytest.approx(3e-4)
    assert got[60] == pytest.approx(3e-5) and got[120] == pytest.approx(3e-6) and got[239] == pytest.approx(3e-7)
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], "adam", 1.0, 0.0)
    got = lrs(WarmupMultiStepLR(opt, [4], 0.1, warmup_epochs=2, warmup_factor=0.1), 6)
    assert got == pytest.approx([0.1, 0.55, 1.0, 1.0, 0.1, 0.1])


def test_schedule_resumes_exactly():
    def make():
        opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], "adam", 1.0, 0.0)
        return WarmupMultiStepLR(opt, [3, 5], 0.5, warmup_epochs=2)

    a = make()
    full = lrs(a, 7)
    b = make()
    lrs(b, 4)
    c = make()
    c.load_state_dict(b.state_dict())
    assert lrs(c, 3) == pytest.approx(full[4:])


# --- command line ---------------------------------------------------------------------------
def test_train_cli_reports_user_errors_without_a_traceback(tmp_path, capsys):
    from reid import train as reid_train

    rc = reid_train.main(["--dataset", "mars", "--root", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: MARS: expected") and "Traceback" not in err
    rc = reid_train.main(["--dataset-option", "bogus=1", "--output-dir", str(tmp_path)])
    assert rc == 1 and "dataset_options: unknown option(s) ['bogus']" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        reid_train.main(["--num-instances", "1"])
    assert exc.value.code == 2 and "num_instances: got 1" in capsys.readouterr().err
