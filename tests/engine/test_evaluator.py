"""Evaluator: frame-weighted tracklet features, MARS-scale ranking, split means, the table."""
import dataclasses

import numpy as np
import pytest
import torch

from reid.engine.config import Config
from reid.engine.evaluator import extract_features, format_results, mean_over_splits
from reid.metrics import evaluate_ranking


class PerFrameStatistics(torch.nn.Module):
    """Stand-in obeying the model contract in eval mode: [n, 3, L, H, W] -> [n, L, D].

    Each frame's feature is a non-linear statistic of that frame alone, so averaging clip means
    (instead of frames) would give a different tracklet feature whenever clips differ in length.
    """

    feature_dim = 3

    def forward(self, x):
        f = x.transpose(1, 2).flatten(2)  # [n, L, 3*H*W]
        return torch.stack([f.mean(2), f.amax(2), f.std(2) ** 2], dim=2)


def test_tracklet_feature_is_the_frame_weighted_mean_whatever_the_clip_length(tiny_root, tiny_data):
    from reid.data import build_dataset

    ds = build_dataset("synthetic", root=tiny_root, verbose=False, **tiny_data)
    tracklets = ds.gallery
    lengths = [len(t.paths) for t in tracklets]
    assert any(n % 3 for n in lengths)  # some tracklets end with a short clip
    cfg = Config(height=32, width=16, test_batch_size=4, num_workers=0)
    model = PerFrameStatistics()
    short = extract_features(model, tracklets, dataclasses.replace(cfg, test_clip_len=3), torch.device("cpu"))
    whole = extract_features(model, tracklets, dataclasses.replace(cfg, test_clip_len=64), torch.device("cpu"))
    assert short.shape == (len(tracklets), 3)
    torch.testing.assert_close(short, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(short.norm(dim=1), torch.ones(len(tracklets)))


def test_mars_sized_ranking_runs_in_chunks():
    # about MARS: 1980 queries, 11310 gallery tracklets (queries appended), 512-D features
    rng = np.random.default_rng(0)
    nq, ng, d = 1980, 11310, 512
    g_pids = rng.integers(0, 1200, ng)
    q_pids = g_pids[rng.choice(ng, nq, replace=False)]
    qf = torch.from_numpy(rng.standard_normal((nq, d), dtype=np.float32))
    gf = torch.from_numpy(rng.standard_normal((ng, d), dtype=np.float32))
    r = evaluate_ranking(q_pids, g_pids, rng.integers(0, 6, nq), rng.integers(0, 6, ng), q_feats=qf, g_feats=gf)
    assert r.num_queries == nq and 0 <= r.mAP <= 1


def split_result(split, r1, mAP):
    return {"dataset": "ilidsvid", "protocol": "query cam1, gallery cam2", "split_id": split, "num_query": 150,
            "num_gallery": 150, "metrics": {"rank1": r1, "rank5": 1.0, "rank10": 1.0, "rank20": 1.0, "mAP": mAP,
                                            "mINP": mAP, "num_valid_queries": 150, "num_skipped_queries": 0}}


def test_mean_over_splits_and_table():
    mean = mean_over_splits([split_result(0, 0.8, 0.7), split_result(1, 0.9, 0.8)])
    assert mean["metrics"]["rank1"] == pytest.approx(0.85) and mean["metrics"]["mAP"] == pytest.approx(0.75)
    assert mean["std"]["rank1"] == pytest.approx(0.05) and mean["num_splits"] == 2
    table = format_results(mean, title="Final evaluation")
    assert "Final evaluation: ilidsvid | protocol: query cam1, gallery cam2" in table
    assert "mean over 2 splits [0, 1]" in table
    cosine_row = next(line for line in table.splitlines() if line.startswith("cosine"))
    assert cosine_row.split()[1:] == ["85.00", "100.00", "100.00", "100.00", "75.00", "75.00"]


def test_single_result_table_names_skipped_queries():
    r = split_result(0, 0.5, 0.25)
    r["metrics"]["num_skipped_queries"] = 3
    r["metrics"]["num_valid_queries"] = 147
    table = format_results(r)
    assert "147 queries evaluated (3 without a valid match skipped) | 150 gallery tracklets" in table
