"""Features of a user's own tracklet folders (`reid.extract`) and nearest-tracklet search (`reid.search`):
the features are the evaluator's, extraction resumes after an interruption, and the exact faiss
search returns the evaluator's ranking."""
import json
import os

import numpy as np
import pytest
import torch

from reid import extract as extract_mod
from reid.data import build_dataset
from reid.engine.evaluator import extract_features
from reid.engine.precision import resolve_policy
from reid.extract import extract_folder, find_tracklets, load_features
from reid.inference import load_trained_model
from reid.metrics import feature_distance, rank_gallery
from reid.search import FlatIndex

from tool_helpers import TINY_DATA, run_module


@pytest.fixture(scope="module")
def trained(tiny_run):
    torch.set_num_threads(1)
    return load_trained_model(os.path.join(tiny_run[0], "model_best.pth"), overrides={"num_workers": 0})


@pytest.fixture(scope="module")
def gallery_npz(tiny_run, tmp_path_factory):
    """`python -m reid.extract` on the synthetic gallery folders, as a user runs it."""
    out = tmp_path_factory.mktemp("extract") / "gallery.npz"
    proc = run_module("reid.extract", "--checkpoint", os.path.join(tiny_run[0], "model_best.pth"),
                      "--root", os.path.join(tiny_run[1], "gallery"), "--out", out, "--num-workers", "0",
                      "--shard-size", "7")
    return str(out), proc


def dataset(root):
    return build_dataset("synthetic", root=root, verbose=False, **TINY_DATA)


def test_extract_writes_one_normalised_feature_per_tracklet_folder(gallery_npz, tiny_run):
    path, proc = gallery_npz
    fs = load_features(path)
    folders = [d for d, _ in find_tracklets(os.path.join(tiny_run[1], "gallery"))]
    assert fs.paths == folders and len(fs) == 20
    assert fs.features.dtype == np.float32 and fs.features.shape == (20, fs.meta["feature_dim"])
    np.testing.assert_allclose(np.linalg.norm(fs.features, axis=1), 1.0, atol=1e-5)
    assert list(fs.num_frames) == [len(f) for _, f in find_tracklets(os.path.join(tiny_run[1], "gallery"))]
    assert fs.meta["checkpoint"].endswith("model_best.pth") and (fs.meta["height"], fs.meta["width"]) == (32, 16)
    assert f"20 tracklets ({int(fs.num_frames.sum())} frames) -> {path}" in proc.stdout
    assert not os.path.exists(path + ".parts")  # shards are removed once joined


def test_extracted_features_are_the_evaluators(gallery_npz, tiny_run, trained):
    fs = load_features(gallery_npz[0])
    ds = dataset(tiny_run[1])
    by_folder = {os.path.dirname(t.paths[0]): t for t in ds.gallery}
    tracklets = [by_folder[p] for p in fs.paths]
    expected = extract_features(trained.model, tracklets, trained.cfg, torch.device("cpu"), progress=False)
    np.testing.assert_allclose(fs.features, expected.numpy(), atol=1e-5)


def test_search_order_is_the_evaluators_ranking(gallery_npz, tiny_run, trained, tmp_path):
    query_npz = str(tmp_path / "query.npz")
    extract_folder(trained, os.path.join(tiny_run[1], "query"), query_npz, progress=False)
    report = tmp_path / "results.json"
    proc = run_module("reid.search", "--gallery", gallery_npz[0], "--query", query_npz, "--topk", "20",
                      "--json", report, "--draw", tmp_path / "results.png")
    assert os.path.getsize(tmp_path / "results.png") > 1000 and f"written: {report}" in proc.stdout
    results = json.loads(report.read_text())
    q, g = load_features(query_npz), load_features(gallery_npz[0])
    dist = feature_distance(torch.from_numpy(q.features), torch.from_numpy(g.features))
    order = rank_gallery(dist).numpy()  # exactly how evaluate_ranking orders the gallery
    assert [r["query"] for r in results] == q.paths
    for i, r in enumerate(results):
        got = [hit["index"] for hit in r["results"]]
        d = dist[i].numpy()
        # the k-th hit is the gallery item of the k-th smallest distance; two whose distances agree to
        # float32 error (faiss and torch sum the dot products in other orders) may come in either order
        assert len(set(got)) == len(got) == len(order[i])
        np.testing.assert_allclose(d[got], d[order[i]], atol=1e-5)
        assert sum(a != b for a, b in zip(got, order[i].tolist())) <= 2 * sum(np.diff(np.sort(d)) < 1e-5)
        np.testing.assert_allclose([hit["distance"] for hit in r["results"]], d[order[i]], atol=1e-5)
        assert [hit["path"] for hit in r["results"]] == [g.paths[j] for j in got]


def test_flat_index_is_exact_on_many_random_features():
    rng = np.random.default_rng(0)
    g, q = rng.normal(size=(5000, 64)).astype(np.float32), rng.normal(size=(50, 64)).astype(np.float32)
    dist, idx = FlatIndex(g).search(q, 25)
    gt = torch.nn.functional.normalize(torch.from_numpy(g), dim=1)
    qt = torch.nn.functional.normalize(torch.from_numpy(q), dim=1)
    ref = feature_distance(qt, gt)
    np.testing.assert_array_equal(idx, rank_gallery(ref)[:, :25].numpy())
    np.testing.assert_allclose(dist, torch.sort(ref, dim=1).values[:, :25].numpy(), atol=1e-5)


def test_search_a_tracklet_folder_with_the_gallerys_checkpoint(gallery_npz):
    fs = load_features(gallery_npz[0])
    proc = run_module("reid.search", "--gallery", gallery_npz[0], "--query", fs.paths[3], "--topk", "3")
    lines = proc.stdout.splitlines()
    first = lines[lines.index(f"query {fs.paths[3]}") + 1].split()
    assert first[0] == "1" and float(first[1]) < 1e-4 and first[2] == fs.paths[3]  # itself, at distance 0


def test_an_interrupted_extraction_resumes_with_the_shards_already_written(trained, tiny_run, tmp_path, monkeypatch):
    root, out = os.path.join(tiny_run[1], "gallery"), str(tmp_path / "feats.npz")
    real = extract_mod.extract_tracklet_features
    calls = []

    def interrupted_after_two_shards(model, frame_lists, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(len(frame_lists))
        return real(model, frame_lists, *args, **kwargs)

    monkeypatch.setattr(extract_mod, "extract_tracklet_features", interrupted_after_two_shards)
    with pytest.raises(KeyboardInterrupt):
        extract_folder(trained, root, out, shard_size=6, progress=False)
    assert sorted(os.listdir(out + ".parts")) == ["manifest.json", "shard_000000.npz", "shard_000001.npz"]
    assert not os.path.exists(out)

    calls.clear()
    monkeypatch.setattr(extract_mod, "extract_tracklet_features",
                        lambda model, frame_lists, *a, **k: calls.append(len(frame_lists)) or real(model, frame_lists, *a, **k))
    fs = extract_folder(trained, root, out, shard_size=6, progress=False)
    assert calls == [6, 2]  # shards 3 and 4 of 20 tracklets; 1 and 2 were read back
    whole = extract_folder(trained, root, str(tmp_path / "whole.npz"), shard_size=100, progress=False)
    # Shards batch the tracklets differently from one whole pass. In fp32 that changes nothing; under
    # bf16 autocast (the policy on a CPU with native bf16) it changes the last bits of a feature.
    policy = resolve_policy(trained.cfg.amp, trained.cfg.memory_format, torch.device("cpu"))
    np.testing.assert_allclose(fs.features, whole.features, atol=1e-6 if policy.amp == "none" else 2e-4)
    assert fs.paths == whole.paths and load_features(out).paths == whole.paths


def test_shards_of_a_different_extraction_are_never_mixed_in(trained, tiny_run, tmp_path, monkeypatch):
    root, out = os.path.join(tiny_run[1], "gallery"), str(tmp_path / "feats.npz")
    monkeypatch.setattr(extract_mod, "extract_tracklet_features", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        extract_folder(trained, root, out, shard_size=6, progress=False)
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"other settings \(shard_size: 6 then, 5 now\).*--restart"):
        extract_folder(trained, root, out, shard_size=5, progress=False)
    assert len(extract_folder(trained, root, out, shard_size=5, restart=True, progress=False)) == 20


def test_a_folder_without_a_readable_frame_is_left_out_and_named(trained, tiny_run, tmp_path):
    import shutil

    good = [d for d, _ in find_tracklets(os.path.join(tiny_run[1], "gallery"))][:2]
    for i, d in enumerate(good):
        shutil.copytree(d, tmp_path / "mine" / f"t{i}")
    (tmp_path / "mine" / "t9").mkdir()
    for i in range(3):
        (tmp_path / "mine" / "t9" / f"{i}.jpg").write_bytes(b"not a jpeg")
    fs = extract_folder(trained, str(tmp_path / "mine"), str(tmp_path / "f.npz"), progress=False)
    assert fs.paths == [str(tmp_path / "mine" / "t0"), str(tmp_path / "mine" / "t1")]
    assert fs.meta["unreadable"] == [str(tmp_path / "mine" / "t9")] and fs.features.shape[0] == 2
    assert load_features(str(tmp_path / "f.npz")).paths == fs.paths


def test_bad_input_is_named(tmp_path, tiny_run):
    ckpt = os.path.join(tiny_run[0], "model_best.pth")
    proc = run_module("reid.extract", "--checkpoint", ckpt, "--root", tmp_path / "missing", "--out", tmp_path / "x.npz",
                      check=False)
    assert proc.returncode == 1 and f"--root: {tmp_path / 'missing'} is not a directory" in proc.stderr
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no tracklet folders"):
        extract_folder(load_trained_model(ckpt), str(tmp_path / "empty"), str(tmp_path / "x.npz"), progress=False)
    (tmp_path / "not.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a features file written by reid.extract"):
        load_features(str(tmp_path / "not.npz"))
    with pytest.raises(ValueError, match="query features are 8-d but the gallery's are 4-d"):
        FlatIndex(np.eye(4, dtype=np.float32)).search(np.ones((1, 8), np.float32), 2)
