"""`--compile` (config key `compile`): the training network goes through torch.compile; evaluation stays
eager. The fast case checks the wiring; the slow one trains for real (minutes of compilation on CPU)
and compares the losses with an eager run."""
import json
import os
import subprocess
import sys

import pytest
import torch

from reid.engine.config import build_parser, load_config
from reid.engine.trainer import train

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_flag_and_yaml_key(tmp_path):
    parser = build_parser("x")
    assert load_config(parser.parse_args([])).compile is False
    assert load_config(parser.parse_args(["--compile"])).compile is True
    (tmp_path / "c.yaml").write_text("run:\n  compile: true\n")
    assert load_config(parser.parse_args(["--config", str(tmp_path / "c.yaml")])).compile is True


def test_training_steps_run_through_torch_compile_and_evaluation_does_not(tiny_config, tmp_path, monkeypatch):
    compiled = []

    def recording_compile(module, **kwargs):  # records what would be compiled, runs it eagerly
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", recording_compile)
    result = train(tiny_config(tmp_path, epochs=1, compile=True))
    assert len(compiled) == 1 and type(compiled[0]).__name__ == "VideoResNet"
    assert 0 <= result["metrics"]["mAP"] <= 1


@pytest.mark.slow
def test_compiled_training_gives_the_eager_losses(tiny_root, tiny_data, tmp_path):
    losses = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        cmd = [sys.executable, "-m", "reid.train", "--root", tiny_root, "--output-dir", str(out), "--height", "32",
               "--width", "16", "--stride", "2", "--num-identities", "4", "--num-instances", "2", "--num-workers", "0",
               "--epochs", "1", "--test-batch-size", "4", "--threads", "1", "--compile", flag]
        for k, v in tiny_data.items():
            cmd += ["--dataset-option", f"{k}={v}"]
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses[flag] = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    # the first steps agree to rounding; later ones drift a little as rounding differences go through Adam
    assert losses["true"][:2] == pytest.approx(losses["false"][:2], rel=1e-5)
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-3)
