"""APM's time_dim, apm_reduction and contrastive are run options (YAML keys and flags) that reach
the model, and resuming with other values names them instead of failing inside load_state_dict."""
import pytest
import torch
import yaml

from train_cli import run_module, snapshot, tiny_flags


@pytest.fixture(scope="module")
def apm_run(tiny_root, tiny_data, tmp_path_factory):
    """A 1-epoch run with time_dim 5 and apm_reduction 8 from YAML, the gate off from a flag."""
    out = tmp_path_factory.mktemp("apm_run")
    config = out / "apm.yaml"
    config.write_text(yaml.safe_dump({"model": {"time_dim": 5, "apm_reduction": 8}}))
    proc = run_module("reid.train", ["--config", str(config), "--contrastive", "false",
                                     *tiny_flags(tiny_root, out, tiny_data, epochs=1, iters_per_epoch=1)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_apm_settings_from_yaml_and_flags_reach_every_apm(apm_run):
    ck = torch.load(apm_run / "checkpoint_last.pth", weights_only=True)
    assert (ck["config"]["time_dim"], ck["config"]["apm_reduction"], ck["config"]["contrastive"]) == (5, 8, False)
    model = ck["model"]
    apm_keys = [k for k in model if ".APM." in k]
    assert apm_keys and all(k.endswith("APM.semantic_mapping.weight") for k in apm_keys)  # no gate weights
    for key in apm_keys:
        ck_channels, channels = model[key].shape[:2]
        assert ck_channels == channels // 8
        temporal = model[key.replace("APM.semantic_mapping", "temporal_conv3d")]
        assert temporal.shape[2] == 5  # the temporal kernel spans time_dim frames
    saved = yaml.safe_load((apm_run / "config.yaml").read_text())
    assert (saved["time_dim"], saved["apm_reduction"], saved["contrastive"]) == (5, 8, False)


def test_resuming_with_other_apm_settings_names_each_of_them(apm_run, tiny_root, tiny_data):
    before = snapshot(apm_run)
    proc = run_module("reid.train", [*tiny_flags(tiny_root, apm_run, tiny_data, epochs=2, iters_per_epoch=1),
                                     "--resume", "auto", "--time-dim", "3", "--apm-reduction", "16",
                                     "--contrastive", "true", "--apm-scale", "2"])
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: cannot resume from {apm_run / 'checkpoint_last.pth'}: it was trained "
                                  "with a different set-up (")
    for text in ("time_dim: checkpoint 5 vs now 3", "apm_reduction: checkpoint 8 vs now 16",
                 "contrastive: checkpoint False vs now True", "apm_scale: checkpoint 4.0 vs now 2.0"):
        assert text in proc.stderr
    assert "Traceback" not in proc.stderr and "load_state_dict" not in proc.stderr
    assert snapshot(apm_run) == before


@pytest.mark.parametrize("flag, value, message", [
    ("--time-dim", "4", "time_dim: got 4, expected an odd integer >= 3"),
    ("--apm-reduction", "0", "apm_reduction: got 0, expected a positive integer"),
])
def test_bad_apm_settings_are_named_before_anything_runs(tmp_path, capsys, flag, value, message):
    from reid import train as reid_train

    with pytest.raises(SystemExit) as exc:
        reid_train.main(["--output-dir", str(tmp_path / "run"), flag, value])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
