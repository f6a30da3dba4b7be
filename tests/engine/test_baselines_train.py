"""Table 2's other baselines through the real engine: a training step and the all-frame
evaluation (clips of up to ``test_clip_len`` frames, frame-weighted tracklet means)."""
import json
import os

import pytest

from reid.engine.trainer import train


@pytest.mark.parametrize("arch", ["ca_nl_resnet18", "deform3d_resnet18", "cnn_lstm_resnet18"])
def test_new_baselines_train_and_evaluate(arch, tiny_config, tmp_path):
    # 64x32 frames: ResNet-18's layer3 maps are 4x2, which the non-local 1x2x2 pooling needs
    cfg = tiny_config(tmp_path, arch=arch, epochs=1, iters_per_epoch=2, height=64, width=32, test_clip_len=5)
    result = train(cfg)
    with open(os.path.join(tmp_path, "train_log.jsonl")) as fh:
        losses = [json.loads(line)["loss"] for line in fh]
    assert len(losses) == 2 and all(l == l and abs(l) < 1e3 for l in losses)  # finite
    m = result["metrics"]
    assert 0.0 <= m["mAP"] <= 1.0 and m["num_queries"] == result["num_query"] > 0
