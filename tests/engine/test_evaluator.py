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


def coded_folder(root, pids, frames=3):
    """query pid p in camera 0, gallery pid p in camera 1: identical frames, red = 60 * p."""
    import os

    import numpy as np
    from PIL import Image

    for split, cam in (("query", 0), ("gallery", 1)):
        for p in pids:
            tdir = os.path.join(root, split, str(p), f"c{cam}")
            os.makedirs(tdir)
            for f in range(frames):
                arr = np.full((16, 8, 3), (60 * p, 20 * f, 77), dtype=np.uint8)
                Image.fromarray(arr).save(os.path.join(tdir, f"{f}.png"))
    os.makedirs(os.path.join(root, "train"))
    return root


def test_a_tracklet_with_no_readable_frame_is_left_out_named_and_counted(tmp_path):
    import glob
    import os

    from reid.data import build_dataset, reset_skipped_frames
    from reid.engine.evaluator import evaluate

    reset_skipped_frames()
    root = coded_folder(str(tmp_path), pids=(1, 2, 3))
    # every frame of query pid 2 and a whole distractor gallery tracklet (pid 4) is unreadable
    broken = sorted(glob.glob(os.path.join(root, "query", "2", "c0", "*.png")))
    os.makedirs(os.path.join(root, "gallery", "4", "c1"))
    broken += [os.path.join(root, "gallery", "4", "c1", f"{f}.png") for f in range(2)]
    for path in broken:
        with open(path, "wb") as fh:
            fh.write(b"\x89PNG truncated")
    ds = build_dataset("folder", root=root, verbose=False)
    assert (len(ds.query), len(ds.gallery)) == (3, 4)
    cfg = Config(height=16, width=8, test_batch_size=4, num_workers=0, rerank=True, rerank_k1=2, rerank_k2=1)
    result = evaluate(PerFrameStatistics(), ds, cfg, torch.device("cpu"), progress=False)
    reset_skipped_frames()

    assert (result["num_query"], result["num_gallery"]) == (2, 3)
    assert result["metrics"]["rank1"] == 1.0 and result["metrics"]["mAP"] == 1.0
    excluded = result["excluded_unreadable"]
    assert (excluded["num_query"], excluded["num_gallery"]) == (1, 1)
    assert excluded["query"] == [{"pid": 2, "camid": 0, "num_frames": 3, "first_frame": broken[0]}]
    assert [(d["pid"], d["num_frames"]) for d in excluded["gallery"]] == [(4, 2)]
    table = format_results(result)
    assert "2 queries evaluated" in table and "3 gallery tracklets" in table
    assert "left out, no readable frame: 1 query and 1 gallery tracklet(s)" in table
    assert f"query pid 2 cam 0, 3 frames: {broken[0]}" in table


def test_no_readable_query_at_all_is_an_error_not_a_table(tmp_path):
    import glob
    import os

    from reid.data import build_dataset, reset_skipped_frames
    from reid.engine.evaluator import evaluate

    reset_skipped_frames()
    root = coded_folder(str(tmp_path), pids=(1, 2))
    for path in glob.glob(os.path.join(root, "query", "*", "*", "*.png")):
        with open(path, "wb") as fh:
            fh.write(b"not an image")
    ds = build_dataset("folder", root=root, verbose=False)
    cfg = Config(height=16, width=8, num_workers=0)
    with pytest.raises(ValueError, match="folder: none of the 2 query tracklets has a readable frame"):
        evaluate(PerFrameStatistics(), ds, cfg, torch.device("cpu"), progress=False)
    reset_skipped_frames()


def test_split_means_count_the_tracklets_left_out():
    a, b = split_result(0, 0.8, 0.7), split_result(1, 0.9, 0.8)
    a["excluded_unreadable"] = {"num_query": 1, "num_gallery": 0, "query": [], "gallery": []}
    b["excluded_unreadable"] = {"num_query": 0, "num_gallery": 2, "query": [], "gallery": []}
    mean = mean_over_splits([a, b])
    assert mean["excluded_unreadable"] == {"num_query": 1, "num_gallery": 2}
    assert "left out, no readable frame: 1 query and 2 gallery tracklet(s)" in format_results(mean)
