"""Ranking metrics: hand-computed cases, the junk rule, skipped queries, brute-force agreement."""
import numpy as np
import pytest
import torch

from reid.metrics import evaluate_ranking


def brute_force(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Straight per-query loop over a dense numpy matrix, written independently of the library."""
    cmcs, aps, inps, skipped = [], [], [], 0
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        matches = (g_pids[order][keep] == q_pids[i]).astype(np.int64)
        if matches.sum() == 0:
            skipped += 1
            continue
        first = int(np.argmax(matches))
        cmcs.append([1.0 if first <= k else 0.0 for k in range(max_rank)])
        hits = np.flatnonzero(matches)
        aps.append(np.mean([(j + 1) / (pos + 1) for j, pos in enumerate(hits)]))
        inps.append(len(hits) / (hits[-1] + 1))
    return np.mean(cmcs, 0), np.mean(aps), np.mean(inps), skipped


def test_hand_computed_single_query():
    # gallery sorted by distance: [wrong, match, wrong, match]
    distmat = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    r = evaluate_ranking([7], [3, 7, 5, 7], [0], [1, 1, 1, 2], distmat=distmat, max_rank=4)
    np.testing.assert_allclose(r.cmc, [0, 1, 1, 1])
    assert r.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert r.mINP == pytest.approx(2 / 4)
    assert r.num_valid_queries == 1 and r.num_skipped == 0


def test_junk_same_identity_same_camera_is_removed_before_ranking():
    # the nearest item is the query's identity from the query's camera: junk, not a hit, and it
    # must not push the other items down the ranking either
    distmat = torch.tensor([[0.0, 0.1, 0.2]])
    r = evaluate_ranking([1], [1, 2, 1], [5], [5, 6, 6], distmat=distmat, max_rank=3)
    np.testing.assert_allclose(r.cmc, [0, 1, 1])  # valid order: [pid2, pid1] -> hit at rank 2
    assert r.mAP == pytest.approx(0.5)
    assert r.mINP == pytest.approx(0.5)


def test_same_identity_other_camera_and_distractors_are_kept():
    # pid 0 (a distractor) from the query's camera is not junk: only same pid AND same camid is
    distmat = torch.tensor([[0.0, 0.5]])
    r = evaluate_ranking([4], [0, 4], [1], [1, 1 + 1], distmat=distmat, max_rank=2)
    np.testing.assert_allclose(r.cmc, [0, 1])


def test_query_without_valid_match_is_skipped_and_counted():
    distmat = torch.tensor([[0.1, 0.2], [0.3, 0.1]])
    # query 0 (pid 1, cam 0) only has a same-camera copy in the gallery: skipped
    r = evaluate_ranking([1, 2], [1, 2], [0, 0], [0, 1], distmat=distmat, max_rank=2)
    assert r.num_skipped == 1 and r.skipped_query_indices == [0]
    assert r.num_valid_queries == 1
    np.testing.assert_allclose(r.cmc, [1, 1])
    assert r.mAP == pytest.approx(1.0)


def test_all_queries_without_match_is_a_clear_error():
    with pytest.raises(ValueError, match="none of the 1 queries has a valid gallery match"):
        evaluate_ranking([1], [2], [0], [1], distmat=torch.zeros(1, 1))


def test_short_gallery_cmc_saturates_instead_of_failing():
    r = evaluate_ranking([1], [2, 1], [0], [1, 1], distmat=torch.tensor([[0.1, 0.2]]), max_rank=20)
    assert r.cmc.shape == (20,)
    assert r.rank(1) == 0.0 and r.rank(2) == 1.0 and r.rank(20) == 1.0


def test_bad_shapes_are_reported_with_the_argument_name():
    with pytest.raises(ValueError, match=r"distmat must have shape \(1, 2\)"):
        evaluate_ranking([1], [1, 2], [0], [1, 1], distmat=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="exactly one"):
        evaluate_ranking([1], [1], [0], [1])


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_agrees_with_brute_force_on_random_data(chunk_size):
    rng = np.random.default_rng(0)
    nq, ng, d = 60, 300, 16
    q_pids, g_pids = rng.integers(0, 25, nq), rng.integers(0, 25, ng)
    q_cams, g_cams = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    qf = torch.from_numpy(rng.standard_normal((nq, d))).float()
    gf = torch.from_numpy(rng.standard_normal((ng, d))).float()
    # pull features of the same identity together so that the metrics are far from trivial
    centres = torch.from_numpy(rng.standard_normal((25, d))).float() * 1.5
    qf += centres[q_pids]
    gf += centres[g_pids]
    r = evaluate_ranking(q_pids, g_pids, q_cams, g_cams, q_feats=qf, g_feats=gf, max_rank=20, chunk_size=chunk_size)
    qn = torch.nn.functional.normalize(qf, dim=1)
    gn = torch.nn.functional.normalize(gf, dim=1)
    dist = (1 - qn @ gn.t()).numpy()
    cmc, mAP, mINP, skipped = brute_force(dist, q_pids, g_pids, q_cams, g_cams, 20)
    assert r.num_skipped == skipped
    np.testing.assert_allclose(r.cmc, cmc, atol=1e-12)
    assert r.mAP == pytest.approx(mAP, abs=1e-9)
    assert r.mINP == pytest.approx(mINP, abs=1e-9)
    assert 0.2 < r.mAP < 0.95  # a non-degenerate case
    # the distmat path gives the same numbers
    r2 = evaluate_ranking(q_pids, g_pids, q_cams, g_cams, distmat=torch.from_numpy(dist), chunk_size=chunk_size)
    assert r2.mAP == pytest.approx(r.mAP, abs=1e-6)
