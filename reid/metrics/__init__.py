"""Evaluation metrics: ranking (CMC / mAP / mINP with the junk rule) and k-reciprocal re-ranking."""
from .ranking import RankingResult, cosine_distance, evaluate_ranking, feature_distance, rank_gallery
from .reranking import k_reciprocal_rerank

__all__ = ["RankingResult", "cosine_distance", "evaluate_ranking", "feature_distance", "k_reciprocal_rerank",
           "rank_gallery"]
