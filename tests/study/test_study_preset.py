"""The generator's `palette` knob (look-alike clothing colours) and the study preset."""
import hashlib
import json

import numpy as np
import pytest

from reid.data.synthetic import GENERATOR_VERSION, SyntheticConfig
from reid.data.synthetic.appearance import PALETTE, sample_appearance
from reid.study.grid import PRETRAIN_DATA, STUDY_PRESET


def _colours(app):
    return [app.upper.c1, app.upper.c2, app.lower.c2, app.hat, app.accessory_colour]


def test_default_set_and_cache_key_are_unchanged_by_the_new_option():
    cfg = SyntheticConfig()
    assert cfg.palette == 0
    before = {k: v for k, v in cfg.to_dict().items() if k != "palette"}   # the key before palette existed
    old_key = hashlib.sha1(json.dumps({"version": GENERATOR_VERSION, **before}, sort_keys=True).encode()).hexdigest()[:12]
    assert cfg.key() == old_key
    assert SyntheticConfig(palette=6).key() != old_key


def test_palette_restricts_every_clothing_colour_to_its_first_k_colours():
    k = 4
    for pid in range(40):
        app = sample_appearance(np.random.default_rng([0, 1, pid, 0]), palette=k)
        assert all(tuple(c) in PALETTE[:k] for c in _colours(app)), pid
        assert app.upper.c1 != app.upper.c2      # a pattern stays visible: two different colours
        if app.lower_kind and app.lower.pattern != "jeans":
            assert tuple(app.lower.c1) in PALETTE[:k]


def test_palette_zero_is_the_continuous_default():
    apps = [sample_appearance(np.random.default_rng([0, 1, pid, 0])) for pid in range(20)]
    assert apps == [sample_appearance(np.random.default_rng([0, 1, pid, 0]), palette=0) for pid in range(20)]
    assert any(tuple(c) not in PALETTE for a in apps for c in _colours(a))


@pytest.mark.parametrize("bad", [-1, len(PALETTE) + 1, 2.5, True])
def test_bad_palette_is_named(bad):
    with pytest.raises(ValueError, match="palette"):
        SyntheticConfig(palette=bad)


def test_study_preset_and_pretraining_set_are_valid_and_disjoint():
    study = SyntheticConfig.from_options(**STUDY_PRESET, misalignment=0.5)
    pre = SyntheticConfig.from_options(**{**STUDY_PRESET, **PRETRAIN_DATA})
    assert pre.seed != study.seed and pre.key() != study.key()
    assert (study.palette, study.height, study.width) == (pre.palette, pre.height, pre.width)
