"""Ranked results for video (`python -m reid.visualize ranks`): a query tracklet, then its top-K gallery
tracklets in the evaluator's order, framed green (match), red (wrong) or grey (junk)."""
import os

import numpy as np
import torch
from PIL import Image

from reid.data import Tracklet, build_dataset
from reid.inference import load_trained_model
from reid.visualize.__main__ import main as visualize_main
from reid.visualize.ranks import (BORDER, COLOURS, GAP, TEXT_H, Tile, draw_ranked_list, match_kinds, rank_tiles,
                                  visualize_ranks)
from tool_helpers import TINY_DATA, run_module


def frames(tmp_path, n, name):
    paths = []
    for i in range(n):
        p = tmp_path / f"{name}_{i}.png"
        Image.new("RGB", (16, 32), (i * 20, 100, 200)).save(p)
        paths.append(str(p))
    return paths


def test_kinds_follow_the_evaluators_junk_rule():
    kinds = match_kinds(5, 1, np.array([5, 5, 7, 5]), np.array([1, 2, 1, 0]))
    assert kinds.tolist() == ["junk", "match", "wrong", "match"]


def test_ranks_count_only_valid_entries_and_junk_is_shown_among_them(tmp_path):
    gallery = [Tracklet(("a",), 5, 1), Tracklet(("b",), 7, 0), Tracklet(("c",), 5, 2), Tracklet(("d",), 8, 0)]
    order = np.array([1, 0, 2, 3])  # wrong, junk, match, wrong
    dist = np.array([0.2, 0.1, 0.3, 0.4])
    tiles = rank_tiles(order, dist, match_kinds(5, 1, np.array([5, 7, 5, 8]), np.array([1, 0, 2, 0])), gallery, topk=2)
    assert [t.top for t in tiles] == ["#1\nd=0.100", "junk\nd=0.200", "#2\nd=0.300"]
    assert [t.colour for t in tiles] == [COLOURS["wrong"], COLOURS["junk"], COLOURS["match"]]
    assert tiles[2].bottom == "pid 5\ncam 2"


def test_each_column_is_framed_in_its_colour(tmp_path):
    query = Tile(frames(tmp_path, 5, "q"), "query", "pid 1", COLOURS["query"])
    results = [Tile(frames(tmp_path, n, f"g{n}"), "#", "", COLOURS[k]) for n, k in ((3, "match"), (1, "wrong"), (8, "junk"))]
    img = draw_ranked_list(query, results, frames=4, width=40, height=80)
    col_w, col_h = 40 + 2 * BORDER, 4 * 80 + 3 * GAP + 2 * BORDER
    assert img.size == (4 * col_w + 3 * GAP + 4 * GAP, col_h + 2 * TEXT_H)
    x = 0
    for i, kind in enumerate(("query", "match", "wrong", "junk")):
        assert img.getpixel((x + 1, TEXT_H + col_h // 2)) == COLOURS[kind]  # the left border, mid-height
        assert img.getpixel((x + BORDER + 20, TEXT_H + BORDER + 40)) != COLOURS[kind]  # a frame inside it
        x += col_w + (4 * GAP if i == 0 else GAP)


def test_cli_writes_one_image_per_query(tiny_run, tmp_path):
    out = tmp_path / "ranks"
    proc = run_module("reid.visualize", "ranks", "--checkpoint", os.path.join(tiny_run[0], "model_best.pth"),
                      "--num-queries", "2", "--topk", "3", "--out", out, "--num-workers", "0")
    files = sorted(os.listdir(out))
    assert len(files) == 2 and f"2 image(s) written to {out}" in proc.stdout
    ds = build_dataset("synthetic", root=tiny_run[1], verbose=False, **TINY_DATA)
    for name, qi in zip(files, (0, len(ds.query) - 1)):  # the first and the last query
        q = ds.query[qi]
        assert name == f"query{qi}_pid{q.pid}_c{q.camid}.png"
        with Image.open(out / name) as img:
            assert img.width >= 4 * 64 and img.height == 4 * 128 + 3 * GAP + 2 * BORDER + 2 * TEXT_H


def test_grid_holds_a_row_per_query_in_the_evaluators_order(tiny_run, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    loaded = load_trained_model(os.path.join(tiny_run[0], "model_best.pth"), overrides={"num_workers": 0})
    ds = build_dataset("synthetic", root=tiny_run[1], verbose=False, **TINY_DATA)
    drawn = []
    import reid.visualize.ranks as ranks

    real = ranks.draw_ranked_list
    monkeypatch.setattr(ranks, "draw_ranked_list", lambda q, r, **kw: drawn.append((q, r)) or real(q, r, **kw))
    [path] = visualize_ranks(loaded.model, ds, loaded.cfg, torch.device("cpu"), str(tmp_path), queries=[1, 4], topk=4,
                             grid=True, progress=False)
    assert os.path.basename(path) == "ranks.png"
    with Image.open(path) as img:
        assert img.height == 2 * (4 * 128 + 3 * GAP + 2 * BORDER + 2 * TEXT_H) + 12
    # the evaluator's features and order, recomputed here
    from reid.engine.evaluator import extract_features
    from reid.metrics import feature_distance, rank_gallery

    qf = extract_features(loaded.model, [ds.query[1], ds.query[4]], loaded.cfg, torch.device("cpu"), progress=False)
    gf = extract_features(loaded.model, ds.gallery, loaded.cfg, torch.device("cpu"), progress=False)
    order = rank_gallery(feature_distance(qf, gf)).numpy()
    for row, (query, tiles) in enumerate(drawn):
        assert query.paths == ds.query[(1, 4)[row]].paths
        assert [t.paths for t in tiles] == [ds.gallery[g].paths for g in order[row][: len(tiles)]]
        assert sum(t.colour != COLOURS["junk"] for t in tiles) == 4


def test_dispatcher_lists_and_rejects_subcommands(capsys):
    assert visualize_main(["--help"]) == 0 and "ranks" in capsys.readouterr().out
    assert visualize_main([]) == 2 and "ranks" in capsys.readouterr().err  # no subcommand: a usage error
    assert visualize_main(["nope"]) == 2 and "unknown subcommand 'nope'" in capsys.readouterr().err


def test_bad_query_index_is_named(tiny_run):
    proc = run_module("reid.visualize", "ranks", "--checkpoint", os.path.join(tiny_run[0], "model_best.pth"),
                      "--queries", "99", "--num-workers", "0", check=False)
    assert proc.returncode == 1 and "--queries: got [99], expected indices in 0..5" in proc.stderr
