"""Aggregation of finished cells: mean and sample std over seeds (checked by hand), table, JSON, plot."""
import json
import math
import os

import pytest

from reid.study.aggregate import aggregate, write_outputs
from reid.study.grid import BUDGETS, build_study


def _write(cell, rank1, mAP):
    os.makedirs(cell.out_dir, exist_ok=True)
    with open(cell.results_path, "w") as fh:
        json.dump({"metrics": {"rank1": rank1, "mAP": mAP, "rank5": 1.0}}, fh)


@pytest.fixture
def study(tmp_path):
    b = BUDGETS["laptop"]().replace(networks=("c2d", "ap3d"), levels=(0.0, 1.0), seeds=(0, 1, 2))
    s = build_study(str(tmp_path / "study"), b)
    cell = {(c.network, c.level, c.seed): c for c in s.cells}
    # c2d at level 0: three seeds; ap3d at level 1: two seeds; c2d level 1: one seed; ap3d level 0: none
    _write(cell["c2d_resnet18", 0.0, 0], 0.60, 0.50)
    _write(cell["c2d_resnet18", 0.0, 1], 0.70, 0.54)
    _write(cell["c2d_resnet18", 0.0, 2], 0.65, 0.58)
    _write(cell["ap3d_resnet18", 1.0, 0], 0.40, 0.30)
    _write(cell["ap3d_resnet18", 1.0, 2], 0.50, 0.36)
    _write(cell["c2d_resnet18", 1.0, 1], 0.45, 0.41)
    os.makedirs(cell["ap3d_resnet18", 0.0, 0].out_dir)  # started, unfinished: ignored
    return s


def test_mean_and_sample_std_over_the_finished_seeds(study):
    summary = aggregate(study)
    rows = {(r["network"], r["misalignment"]): r for r in summary["rows"]}
    assert set(rows) == {("c2d_resnet18", 0.0), ("ap3d_resnet18", 1.0), ("c2d_resnet18", 1.0)}
    r = rows["c2d_resnet18", 0.0]
    assert r["n"] == 3 and r["seeds"] == [0, 1, 2]
    # mAP 50, 54, 58: mean 54, deviations -4, 0, 4 -> sample variance 32/2 = 16 -> std 4
    assert r["mAP"]["mean"] == pytest.approx(54.0) and r["mAP"]["std"] == pytest.approx(4.0)
    # Rank-1 60, 70, 65: mean 65, deviations -5, 5, 0 -> variance 50/2 -> std 5
    assert r["rank1"]["mean"] == pytest.approx(65.0) and r["rank1"]["std"] == pytest.approx(5.0)
    r = rows["ap3d_resnet18", 1.0]
    # 30, 36: mean 33, deviations +-3 -> variance 18/1 -> std sqrt(18)
    assert r["n"] == 2 and r["mAP"]["mean"] == pytest.approx(33.0) and r["mAP"]["std"] == pytest.approx(math.sqrt(18))
    r = rows["c2d_resnet18", 1.0]
    assert r["n"] == 1 and r["mAP"]["mean"] == pytest.approx(41.0) and r["mAP"]["std"] is None
    assert summary["cells_done"] == 6 and summary["cells_total"] == 12


def test_outputs_table_json_and_plot(study, tmp_path):
    paths = write_outputs(study, str(tmp_path / "report"))
    table = open(paths["table"]).read()
    assert "| c2d_resnet18 | 0 | 3 | 65.00 ± 5.00 | 54.00 ± 4.00 | - | - |" in table
    assert "| c2d_resnet18 | 1 | 1 | 45.00 | 41.00 |" in table
    assert "6/12 cells" in table
    data = json.load(open(paths["json"]))
    assert len(data["rows"]) == 3
    with open(paths["plot"], "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(paths["plot"]) > 5000


def test_nothing_finished_gives_an_empty_table_and_no_plot(tmp_path):
    s = build_study(str(tmp_path / "s"), BUDGETS["laptop"]())
    paths = write_outputs(s)
    assert "plot" not in paths and "0/45 cells" in open(paths["table"]).read()


def test_paired_differences_within_seeds_with_a_t_interval(tmp_path):
    b = BUDGETS["laptop"]().replace(networks=("c2d", "p3d_c", "ap3d"), levels=(1.0,), seeds=(0, 1, 2))
    s = build_study(str(tmp_path / "study"), b)
    cell = {(c.network, c.seed): c for c in s.cells}
    for seed, (p3d, ap3d) in enumerate([(0.40, 0.42), (0.50, 0.53), (0.45, 0.46)]):
        _write(cell["p3d_c_resnet18", seed], 0.5, p3d)
        _write(cell["ap3d_resnet18", seed], 0.5, ap3d)
    _write(cell["c2d_resnet18", 0], 0.5, 0.41)  # one seed only
    by = {(c["network"], c["baseline"]): c for c in aggregate(s)["contrasts"]}
    assert set(by) == {("ap3d_resnet18", "p3d_c_resnet18"), ("ap3d_resnet18", "c2d_resnet18"),
                       ("p3d_c_resnet18", "c2d_resnet18")}
    c = by["ap3d_resnet18", "p3d_c_resnet18"]
    # differences +2, +3, +1 points: mean 2, sample std 1; t(0.975, 2 df) = 4.303 -> half-width 4.303 / sqrt(3)
    assert c["seeds"] == [0, 1, 2] and c["differences"] == pytest.approx([2.0, 3.0, 1.0])
    assert c["mean"] == pytest.approx(2.0) and c["std"] == pytest.approx(1.0)
    assert c["ci95"] == pytest.approx([2.0 - 4.3027 / math.sqrt(3), 2.0 + 4.3027 / math.sqrt(3)], abs=1e-3)
    c = by["ap3d_resnet18", "c2d_resnet18"]
    assert c["seeds"] == [0] and c["mean"] == pytest.approx(1.0) and c["std"] is None and c["ci95"] is None
    table = write_outputs(s, str(tmp_path / "report"))["table"]
    assert "| ap3d_resnet18 - p3d_c_resnet18 | 1 | 3 | +2.00, +3.00, +1.00 | +2.00 ± 1.00 | [-0.48, +4.48] |" \
        in open(table).read()
