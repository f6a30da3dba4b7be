"""k-reciprocal re-ranking against a direct dense transcription of Zhong et al.'s algorithm."""
import numpy as np
import pytest
import torch

from reid.metrics import evaluate_ranking, k_reciprocal_rerank


def direct_rerank(q_g, q_q, g_g, k1, k2, lam):
    """Dense, loop-by-loop version of the published algorithm (Zhong et al., CVPR 2017)."""
    original = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0)
    original = np.power(original, 2).astype(np.float32)
    original = np.transpose(original / np.max(original, axis=0))
    V = np.zeros_like(original)
    rank = np.argsort(original, kind="stable").astype(np.int32)
    nq, n = q_g.shape[0], original.shape[0]
    for i in range(n):
        fwd = rank[i, : k1 + 1]
        bwd = rank[fwd, : k1 + 1]
        recip = fwd[np.where(bwd == i)[0]]
        expansion = recip
        for cand in recip:
            cf = rank[cand, : int(np.around(k1 / 2)) + 1]
            cb = rank[cf, : int(np.around(k1 / 2)) + 1]
            crecip = cf[np.where(cb == cand)[0]]
            if len(np.intersect1d(crecip, recip)) > 2 / 3 * len(crecip):
                expansion = np.append(expansion, crecip)
        expansion = np.unique(expansion)
        w = np.exp(-original[i, expansion])
        V[i, expansion] = w / np.sum(w)
    original = original[:nq]
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(0) for i in range(n)])
    jac = np.zeros_like(original)
    for i in range(nq):
        temp_min = np.zeros(n, dtype=np.float32)
        for j in np.where(V[i] != 0)[0]:
            others = np.where(V[:, j] != 0)[0]
            temp_min[others] += np.minimum(V[i, j], V[others, j])
        jac[i] = 1 - temp_min / (2 - temp_min)
    return (jac * (1 - lam) + original * lam)[:, nq:]


def features(seed, nq=12, ng=40, d=8, ids=6):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, d)) * 2
    qp, gp = rng.integers(0, ids, nq), rng.integers(0, ids, ng)
    qf = torch.from_numpy(centres[qp] + rng.standard_normal((nq, d))).float()
    gf = torch.from_numpy(centres[gp] + rng.standard_normal((ng, d))).float()
    return qf, gf, qp, gp


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 3, 0.5), (6, 1, 0.0)])
def test_matches_direct_implementation(k1, k2, lam):
    qf, gf, _, _ = features(1)
    qn, gn = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    dist = lambda a, b: (1 - a @ b.t()).clamp(min=0).double().numpy()  # noqa: E731
    expected = direct_rerank(dist(qn, gn), dist(qn, qn), dist(gn, gn), k1, k2, lam)
    got = k_reciprocal_rerank(qf, gf, k1=k1, k2=k2, lambda_value=lam, chunk_size=7).numpy()
    assert got.shape == (12, 40)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_lambda_one_keeps_the_original_ranking():
    qf, gf, _, _ = features(2)
    rr = k_reciprocal_rerank(qf, gf, lambda_value=1.0)
    qn, gn = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    d = (1 - qn @ gn.t()).clamp(min=0) ** 2
    np.testing.assert_array_equal(rr.argsort(1).numpy(), d.argsort(1).numpy())


def test_reranked_distances_feed_the_ranking_metrics():
    qf, gf, qp, gp = features(3, nq=30, ng=120, ids=10)
    qc, gc = np.zeros(30, int), np.ones(120, int)
    base = evaluate_ranking(qp, gp, qc, gc, q_feats=qf, g_feats=gf)
    rr = evaluate_ranking(qp, gp, qc, gc, distmat=k_reciprocal_rerank(qf, gf))
    # on clustered data re-ranking must not wreck retrieval (it usually improves mAP)
    assert rr.mAP > base.mAP - 0.05


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_rerank(torch.zeros(2, 3), torch.zeros(2, 3), lambda_value=2)
    with pytest.raises(ValueError, match=r"\[Q, D\]"):
        k_reciprocal_rerank(torch.zeros(2, 3), torch.zeros(2, 4))
