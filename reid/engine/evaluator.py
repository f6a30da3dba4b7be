"""Evaluation with the field's video re-ID protocol.

* Every frame of every tracklet is used: the test loader cuts each tracklet into clips of at
  most ``test_clip_len`` (32) frames; the model returns per-frame features; a tracklet's
  feature is the mean over ALL its frames (frame-weighted, so a short last clip weighs what its
  frames weigh), then L2-normalised. Distance = cosine distance.
* Under torchrun every rank extracts a disjoint share of the tracklets; the per-tracklet
  features are gathered (variable row counts) so that every rank holds the full matrices, and
  rank 0 computes the metrics.
* A query or gallery tracklet none of whose frames could be read would be a blank clip, i.e. a
  meaningless feature that still ranks: it is left out of the evaluation, and named and counted
  in the result (``excluded_unreadable``) and the table.
* CMC rank-1/5/10/20, mAP and mINP with the junk rule; optional k-reciprocal re-ranking. The
  result also holds the whole CMC curve (``"cmc"``: ranks 1..50) that ``reid.plot`` draws.
* iLIDS-VID / PRID: one model per split; :func:`mean_over_splits` averages the split results.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Optional, Sequence

import numpy as np
import torch

from ..metrics import evaluate_ranking, k_reciprocal_rerank
from . import distributed as du
from .precision import resolve_policy
from .workers import resolve_num_workers
from .fileio import atomic_write_json

__all__ = ["extract_features", "evaluate", "format_results", "mean_over_splits", "write_json", "METRIC_KEYS",
           "CMC_RANKS"]

METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
# results.json holds the whole CMC curve, ranks 1..CMC_RANKS ("cmc"), for plotting
CMC_RANKS = 50


def extract_features(model, tracklets, cfg, device: torch.device, desc: str = "features", progress: bool = True) -> torch.Tensor:
    """[N, D] L2-normalised features of ``tracklets`` (the full set on every rank), computed under
    ``torch.inference_mode`` with the run's precision/layout policy (``cfg.amp``, ``cfg.memory_format``)."""
    from reid.data import build_test_loader  # imported here: reid.data is optional for the metrics

    rank, world = du.rank(), du.world_size()
    mine = list(range(rank, len(tracklets), world))
    dim = int(model.feature_dim)
    sums = torch.zeros((len(mine), dim), dtype=torch.float64)
    counts = torch.zeros(len(mine), dtype=torch.float64)
    policy = resolve_policy(cfg.amp, cfg.memory_format, device)
    policy.prepare_model(model)  # a no-op when the trainer already converted it
    was_training = model.training
    model.eval()
    if mine:
        loader = build_test_loader(
            [tracklets[i] for i in mine],
            clip_len=cfg.test_clip_len,
            height=cfg.height,
            width=cfg.width,
            batch_size=cfg.test_batch_size,
            num_workers=resolve_num_workers(cfg.num_workers, device)[0],
        )
        bar = None
        if progress and du.is_main():
            from tqdm import tqdm

            total_frames = sum(len(tracklets[i].paths) for i in mine)
            bar = tqdm(total=total_frames, desc=desc, unit="frame", dynamic_ncols=True, leave=False, disable=None)
        for clips, index in loader:
            clips = policy.prepare_batch(clips.to(device, non_blocking=True))
            with torch.inference_mode(), policy.autocast(device):
                frame_feats = model(clips)  # [n, L, D]
            if frame_feats.dim() != 3 or frame_feats.shape[0] != clips.shape[0] or frame_feats.shape[2] != dim:
                raise RuntimeError(
                    f"model in eval mode must return per-frame features [n, L, {dim}], got {tuple(frame_feats.shape)}"
                )
            index = torch.as_tensor(index).long()
            sums.index_add_(0, index, frame_feats.double().sum(1).cpu())
            counts.index_add_(0, index, torch.full((len(index),), float(frame_feats.shape[1]), dtype=torch.float64))
            if bar is not None:
                bar.update(frame_feats.shape[0] * frame_feats.shape[1] * world)
        if bar is not None:
            bar.close()
    expected = torch.tensor([len(tracklets[i].paths) for i in mine], dtype=torch.float64)
    if not torch.equal(counts, expected):
        bad = int(torch.nonzero(counts != expected)[0])
        raise RuntimeError(
            f"test loader returned {int(counts[bad])} frames for tracklet {mine[bad]} which has "
            f"{int(expected[bad])}: every frame must be seen exactly once"
        )
    feats = (sums / counts.clamp(min=1)[:, None]).float()
    if world > 1:
        order = du.all_gather_rows(torch.tensor(mine, dtype=torch.long, device=device))
        feats = du.all_gather_rows(feats.to(device)).cpu()
        full = torch.empty((len(tracklets), dim))
        full[order.cpu()] = feats
        feats = full
    if was_training:
        model.train()
    return torch.nn.functional.normalize(feats, dim=1)


def _unreadable(tracklets, device: torch.device) -> list[int]:
    """Indices of tracklets with no readable frame, from every rank's record (call on all ranks)."""
    from reid.data import unreadable_tracklets

    flags = torch.zeros(len(tracklets), dtype=torch.float32)
    flags[unreadable_tracklets(tracklets)] = 1.0
    if du.world_size() > 1:  # each rank read (and recorded) only its own share of the frames
        flags = du.all_reduce_sum(flags.to(device)).cpu()
    return torch.nonzero(flags > 0).flatten().tolist()


def _describe(t) -> dict:
    return {"pid": int(t.pid), "camid": int(t.camid), "num_frames": len(t.paths), "first_frame": t.paths[0]}


def _readable_only(tracklets, feats: torch.Tensor, device: torch.device, subset: str, dataset_name: str):
    """(kept tracklets, their features, descriptions of the left-out ones)."""
    bad = _unreadable(tracklets, device)
    if len(bad) == len(tracklets):
        raise ValueError(
            f"{dataset_name}: none of the {len(tracklets)} {subset} tracklets has a readable frame (first: "
            f"{tracklets[0].paths[0]}); nothing can be evaluated. `python -m reid.data --verify` lists the bad frames"
        )
    if not bad:
        return list(tracklets), feats, []
    keep = sorted(set(range(len(tracklets))) - set(bad))
    return [tracklets[i] for i in keep], feats[keep], [_describe(tracklets[i]) for i in bad]


def evaluate(model, dataset, cfg, device: torch.device, progress: bool = True) -> Optional[dict]:
    """Extract query/gallery features and compute the metrics; the result dict on rank 0."""
    t0 = time.time()
    log = logging.getLogger("reid")
    if du.is_main():
        frames = sum(len(t.paths) for t in dataset.query) + sum(len(t.paths) for t in dataset.gallery)
        log.info(
            f"evaluating: features of {len(dataset.query)} query + {len(dataset.gallery)} gallery tracklets "
            f"({frames} frames, clips of <= {cfg.test_clip_len}) on {du.world_size()} process(es)"
        )
    qf = extract_features(model, dataset.query, cfg, device, desc="query features", progress=progress)
    gf = extract_features(model, dataset.gallery, cfg, device, desc="gallery features", progress=progress)
    name = getattr(dataset, "name", cfg.dataset)
    query, qf, q_out = _readable_only(dataset.query, qf, device, "query", name)
    gallery, gf, g_out = _readable_only(dataset.gallery, gf, device, "gallery", name)
    if not du.is_main():
        return None
    seconds = time.time() - t0
    log.info(
        f"features of {frames} frames extracted in {seconds:.1f}s ({frames / max(seconds, 1e-9):.0f} frames/s, "
        f"{resolve_policy(cfg.amp, cfg.memory_format, device).short()})"
    )
    if q_out or g_out:
        log.warning(f"left out of the evaluation: {len(q_out)} query and {len(g_out)} gallery tracklet(s) "
                    f"with no readable frame")
    q_pids = [t.pid for t in query]
    g_pids = [t.pid for t in gallery]
    q_cams = [t.camid for t in query]
    g_cams = [t.camid for t in gallery]
    ranking = evaluate_ranking(q_pids, g_pids, q_cams, g_cams, q_feats=qf, g_feats=gf, max_rank=CMC_RANKS)
    result = {
        "dataset": name,
        "protocol": getattr(dataset, "protocol", ""),
        "split_id": cfg.split_id,
        "num_query": len(q_pids),
        "num_gallery": len(g_pids),
        "excluded_unreadable": {"num_query": len(q_out), "num_gallery": len(g_out), "query": q_out, "gallery": g_out},
        "distance": "cosine",
        "metrics": ranking.as_dict(),
        "cmc": ranking.cmc.tolist(),
    }
    if cfg.rerank:
        distmat = k_reciprocal_rerank(qf, gf, k1=cfg.rerank_k1, k2=cfg.rerank_k2, lambda_value=cfg.rerank_lambda)
        rr = evaluate_ranking(q_pids, g_pids, q_cams, g_cams, distmat=distmat, max_rank=CMC_RANKS)
        result["rerank"] = {
            "k1": cfg.rerank_k1,
            "k2": cfg.rerank_k2,
            "lambda": cfg.rerank_lambda,
            "metrics": rr.as_dict(),
            "cmc": rr.cmc.tolist(),
        }
    result["eval_time_s"] = round(time.time() - t0, 2)
    return result


def mean_over_splits(results: Sequence[dict]) -> dict:
    """Average the metrics of per-split results (iLIDS-VID / PRID report the mean of 10 splits)."""
    if not results:
        raise ValueError("mean_over_splits needs at least one result")

    def mean(key_path):
        vals = []
        for r in results:
            node = r
            for k in key_path:
                node = node[k]
            vals.append(node)
        return float(np.mean(vals))

    out = {
        "dataset": results[0]["dataset"],
        "protocol": results[0]["protocol"],
        "split_id": [r["split_id"] for r in results],
        "num_splits": len(results),
        "distance": "cosine",
        "metrics": {k: mean(("metrics", k)) for k in METRIC_KEYS if k in results[0]["metrics"]},
        "std": {k: float(np.std([r["metrics"][k] for r in results])) for k in METRIC_KEYS if k in results[0]["metrics"]},
    }
    if all("cmc" in r for r in results):
        out["cmc"] = np.mean([r["cmc"] for r in results], axis=0).tolist()
    if any("excluded_unreadable" in r for r in results):
        out["excluded_unreadable"] = {
            k: sum(r.get("excluded_unreadable", {}).get(k, 0) for r in results) for k in ("num_query", "num_gallery")
        }
    if all("rerank" in r for r in results):
        out["rerank"] = {"metrics": {k: mean(("rerank", "metrics", k)) for k in METRIC_KEYS}}
        if all("cmc" in r["rerank"] for r in results):
            out["rerank"]["cmc"] = np.mean([r["rerank"]["cmc"] for r in results], axis=0).tolist()
    return out


def format_results(result: dict, title: Optional[str] = None) -> str:
    """The evaluation table (percentages), naming dataset, protocol and query counts."""
    m = result["metrics"]
    head = title or "Evaluation"
    lines = [f"{head}: {result['dataset']}"]
    if result.get("protocol"):
        lines[0] += f" | protocol: {result['protocol']}"
    if "num_splits" in result:
        lines.append(f"mean over {result['num_splits']} splits {result['split_id']}")
    else:
        lines.append(
            f"{m.get('num_valid_queries', '?')} queries evaluated ({m.get('num_skipped_queries', 0)} without a valid "
            f"match skipped) | {result['num_gallery']} gallery tracklets | cosine distance"
        )
    lines += _excluded_lines(result.get("excluded_unreadable"))
    cols = ["Rank-1", "Rank-5", "Rank-10", "Rank-20", "mAP", "mINP"]
    header = f"{'':<12}" + "".join(f"{c:>9}" for c in cols)
    rule = "-" * len(header)
    lines += [rule, header, rule]

    def row(name, metrics):
        vals = "".join(
            f"{100 * metrics[k]:>9.2f}" if k in metrics and not math.isnan(metrics[k]) else f"{'-':>9}"
            for k in METRIC_KEYS
        )
        return f"{name:<12}{vals}"

    lines.append(row("cosine", m))
    if "rerank" in result:
        lines.append(row("re-ranked", result["rerank"]["metrics"]))
    if "std" in result:
        lines.append(row("(std)", result["std"]))
    lines.append(rule)
    return "\n".join(lines)


def _excluded_lines(excluded: Optional[dict], max_named: int = 5) -> list[str]:
    """'left out: ...' lines naming the tracklets the evaluation could not use (none if all were used)."""
    if not excluded or not (excluded["num_query"] or excluded["num_gallery"]):
        return []
    lines = [f"left out, no readable frame: {excluded['num_query']} query and {excluded['num_gallery']} "
             f"gallery tracklet(s)"]
    named = [(s, d) for s in ("query", "gallery") for d in excluded.get(s, [])]
    for subset, d in named[:max_named]:
        lines.append(f"  {subset} pid {d['pid']} cam {d['camid']}, {d['num_frames']} frames: {d['first_frame']}")
    if len(named) > max_named:
        lines.append(f"  ... and {len(named) - max_named} more (all listed in the results JSON)")
    return lines


def write_json(obj: dict, path: str) -> None:
    """Write JSON atomically (see :mod:`reid.engine.fileio`)."""
    atomic_write_json(path, obj)
