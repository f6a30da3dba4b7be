"""The study's plan: fair cells (only --arch differs), every option pinned, unfinished-only commands."""
import json
import os

import pytest

from reid.study.grid import BUDGETS, PRETRAIN_DATA, STUDY_PRESET, build_study
from reid.study.runner import unfinished_commands


def _study(tmp_path, **changes):
    grid = {"networks": ("c2d", "p3d_c", "ap3d"), "levels": (0.0, 1.0), "seeds": (0, 1), **changes}
    b = BUDGETS["laptop"]().replace(**grid)
    return build_study(str(tmp_path / "study"), b)


def _flags(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_grid_is_networks_x_levels_x_seeds_in_seed_major_order(tmp_path):
    s = _study(tmp_path)
    assert len(s.cells) == 3 * 2 * 2
    assert [c.name for c in s.cells[:3]] == ["c2d_resnet18/mis0/seed0", "p3d_c_resnet18/mis0/seed0",
                                            "ap3d_resnet18/mis0/seed0"]
    assert {c.seed for c in s.cells[:6]} == {0}
    assert len({c.out_dir for c in s.cells}) == len(s.cells)


def test_cells_of_one_level_and_seed_differ_only_in_arch_and_output_dir(tmp_path):
    s = _study(tmp_path)
    for level in (0.0, 1.0):
        for seed in (0, 1):
            group = [c for c in s.cells if c.level == level and c.seed == seed]
            stripped = set()
            for c in group:
                argv = list(c.argv)
                for flag in ("--arch", "--output-dir"):
                    i = argv.index(flag)
                    del argv[i:i + 2]
                stripped.add(tuple(argv))
            assert len(stripped) == 1


def test_every_cell_pins_precision_layout_data_and_the_shared_backbone(tmp_path):
    s = _study(tmp_path, amp="bf16")
    for c in s.cells:
        argv = list(c.argv)
        for flag in ("--amp", "--threads", "--device", "--height", "--width", "--seq-len", "--apm-backend",
                     "--last-stride", "--lr", "--epochs", "--seed", "--test-clip-len", "--resume"):
            assert len(_flags(argv, flag)) == 1, flag
        assert _flags(argv, "--amp") == ["bf16"] and _flags(argv, "--resume") == ["auto"]
        assert _flags(argv, "--pretrained") == [s.pretrained_path]
        options = dict(o.split("=", 1) for o in _flags(argv, "--dataset-option"))
        assert options["misalignment"] == str(c.level)
        for k, v in STUDY_PRESET.items():
            assert options[k] == str(v)
    pre = dict(o.split("=", 1) for o in _flags(list(s.pretrain.argv), "--dataset-option"))
    assert pre["seed"] == str(PRETRAIN_DATA["seed"]) != "0"   # a disjoint population of identities
    assert _flags(list(s.pretrain.argv), "--arch") == ["c2d_resnet18"]
    assert "--pretrained" not in s.pretrain.argv


def test_print_commands_lists_only_unfinished_steps(tmp_path):
    s = _study(tmp_path)
    lines = unfinished_commands(s)
    assert sum("reid.train" in line for line in lines) == 1 + len(s.cells)
    # pretraining finished and converted; two cells finished
    for c in (s.pretrain, s.cells[0], s.cells[4]):
        os.makedirs(c.out_dir)
        with open(c.results_path, "w") as fh:
            json.dump({"metrics": {"rank1": 0.5, "mAP": 0.5}}, fh)
    open(s.pretrained_path, "wb").close()
    lines = unfinished_commands(s)
    train_lines = [line for line in lines if "reid.train" in line]
    assert len(train_lines) == len(s.cells) - 2
    assert not any(s.pretrain.out_dir + " " in line or line.endswith(s.pretrain.out_dir) for line in train_lines)
    assert not any(line.endswith(s.cells[0].out_dir) or line.endswith(s.cells[4].out_dir) for line in train_lines)


def test_bad_grid_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="levels"):
        _study(tmp_path, levels=(0.0, 1.5))
    with pytest.raises(ValueError, match="empty"):
        _study(tmp_path, seeds=())


def test_a_study_may_grow_its_grid_but_not_change_its_settings(tmp_path):
    from reid.study.runner import PLAN_NAME, _check_plan

    _check_plan(_study(tmp_path, seeds=(0,)))
    grown = _study(tmp_path, seeds=(0, 1), networks=("c2d", "p3d_c", "ap3d", "i3d"))
    _check_plan(grown)                                       # another seed and network: allowed
    saved = json.load(open(os.path.join(grown.out, PLAN_NAME)))
    assert set(saved["cells"]) == {c.name for c in grown.cells}
    with pytest.raises(ValueError, match="another plan.*epochs"):
        _check_plan(_study(tmp_path, epochs=5))
    with pytest.raises(ValueError, match="another plan.*amp"):
        _check_plan(_study(tmp_path, amp="none" if grown.budget.amp == "bf16" else "bf16"))
