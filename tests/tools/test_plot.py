"""Plots written with the results: CMC curves (the evaluator's own values), training curves, and
`python -m reid.plot` comparing several runs on one figure."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from reid import plot
from reid.engine.evaluator import CMC_RANKS, write_json
from reid.metrics import evaluate_ranking

from tool_helpers import run_module


def png_size(path):
    assert os.path.isfile(path) and os.path.getsize(path) > 1000, path
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def results(run_dir):
    with open(os.path.join(run_dir, "results.json")) as fh:
        return json.load(fh)


def test_training_run_writes_cmc_and_training_curves(tiny_run):
    out, _, proc = tiny_run
    assert png_size(os.path.join(out, "cmc.png"))[0] >= 400
    assert png_size(os.path.join(out, "training_curves.png"))[0] >= 800
    assert "plots:" in proc.stdout + proc.stderr and "cmc.png" in open(os.path.join(out, "log.txt")).read()


def test_results_hold_the_whole_cmc_curve_consistent_with_the_metrics(tiny_run):
    res = results(tiny_run[0])
    for section in (res, res["rerank"]):  # with and without re-ranking
        cmc = np.array(section["cmc"])
        assert len(cmc) == CMC_RANKS == 50
        assert np.all(np.diff(cmc) >= 0) and 0 <= cmc[0] and cmc[-1] <= 1
        for k in (1, 5, 10, 20):
            assert cmc[k - 1] == section["metrics"][f"rank{k}"]


def test_the_cmc_drawn_is_the_evaluators(tiny_run):
    run = plot.load_run(tiny_run[0])
    res = results(tiny_run[0])
    ax = plot.cmc_figure([run]).axes[0]
    cosine, reranked = ax.lines  # both evaluations were run (--rerank)
    np.testing.assert_array_equal(cosine.get_xdata(), np.arange(1, 51))
    np.testing.assert_array_equal(cosine.get_ydata(), 100 * np.array(res["cmc"]))
    np.testing.assert_array_equal(reranked.get_ydata(), 100 * np.array(res["rerank"]["cmc"]))


def test_cmc_from_evaluate_ranking_survives_the_results_file_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(30, 8)), rng.normal(size=(200, 8))
    q_pids, g_pids = rng.integers(0, 10, 30), rng.integers(0, 10, 200)
    q_cams, g_cams = np.zeros(30, int), np.ones(200, int)
    import torch

    ranking = evaluate_ranking(q_pids, g_pids, q_cams, g_cams, q_feats=torch.tensor(q), g_feats=torch.tensor(g),
                               max_rank=CMC_RANKS)
    write_json({"cmc": ranking.cmc.tolist(), "metrics": ranking.as_dict()}, str(tmp_path / "x.results.json"))
    path = plot.plot_results_file(str(tmp_path / "x.results.json"))
    assert path == str(tmp_path / "x.cmc.png") and png_size(path)
    line = plot.cmc_figure([plot.load_run(str(tmp_path / "x.results.json"))]).axes[0].lines[0]
    np.testing.assert_array_equal(line.get_ydata(), 100 * ranking.cmc)


def test_training_curves_by_epoch_with_the_evaluations(tiny_run):
    out = tiny_run[0]
    run = plot.load_run(out)
    with open(os.path.join(out, "train_log.jsonl")) as fh:
        steps = [json.loads(line) for line in fh]
    assert len(run.steps["loss"]) == len(steps) and list(run.epochs["epoch"]) == [1, 2]
    assert run.epochs["loss"][0] == pytest.approx(np.mean([s["loss"] for s in steps if s["epoch"] == 0]))
    # mAP after epoch 1 (--eval-every 1, from the TensorBoard events) and the final one (results.json)
    assert sorted(run.evals["mAP"]) == [1, 2]
    assert run.evals["mAP"][2] == results(out)["metrics"]["mAP"]
    titles = [ax.get_title() for ax in plot.training_figure([run]).axes]
    assert titles == ["training loss", "training accuracy (%)", "learning rate", "evaluation mAP and rank-1"]
    lr_axis = plot.training_figure([run]).axes[2]
    assert lr_axis.get_yscale() == "log" and lr_axis.lines


def test_cli_draws_several_runs_on_one_figure(tiny_run, tmp_path):
    a, b = tmp_path / "a" / "ap3d", tmp_path / "b" / "ap3d"  # same basename: told apart by their paths
    shutil.copytree(tiny_run[0], a, ignore=shutil.ignore_patterns("*.pth"))
    shutil.copytree(tiny_run[0], b, ignore=shutil.ignore_patterns("*.pth"))
    out = tmp_path / "compare.png"
    proc = run_module("reid.plot", a, b, "--out", out)
    assert f"written: {out}" in proc.stdout and png_size(out)[0] >= 1200
    fig = plot.comparison_figure([plot.load_run(str(a), "a/ap3d"), plot.load_run(str(b), "b/ap3d")])
    labels = [line.get_label() for line in fig.axes[5].lines]
    assert any(lbl.startswith("a/ap3d (cosine)") for lbl in labels) and any(lbl.startswith("b/ap3d (re-ranked)") for lbl in labels)


def test_cli_names_a_missing_run(tmp_path, capsys):
    assert plot.main([str(tmp_path / "nope")]) == 1
    assert f"{tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert plot.main([str(tmp_path / "empty")]) == 1
    assert "neither train_log.jsonl nor results.json" in capsys.readouterr().err


def test_reid_test_writes_the_cmc_png_next_to_its_results(tiny_run):
    out = tiny_run[0]
    run_module("reid.test", "--checkpoint", os.path.join(out, "model_best.pth"), "--num-workers", "0")
    assert png_size(os.path.join(out, "model_best.cmc.png"))
    assert len(json.load(open(os.path.join(out, "model_best.results.json")))["cmc"]) == 50
