"""Offline evaluation: splits, exact top-k, ranking and beyond-accuracy metrics, baselines."""

from recsys.evaluation.baselines import ItemKNNRecommender, PopularityRecommender, RandomRecommender
from recsys.evaluation.beyond import (
    activity_buckets,
    activity_thresholds,
    breakdown,
    catalog_coverage,
    gini,
    intra_list_diversity,
    novelty,
    popularity_bias,
)
from recsys.evaluation.metrics import per_user_metrics, ranking_metrics_at_k, recommenders_metrics
from recsys.evaluation.splits import Split, leave_last_n_split, random_split, stratified_split, time_split
from recsys.evaluation.topk import top_k_scores

__all__ = [
    "Split",
    "random_split",
    "leave_last_n_split",
    "time_split",
    "stratified_split",
    "top_k_scores",
    "ranking_metrics_at_k",
    "per_user_metrics",
    "recommenders_metrics",
    "catalog_coverage",
    "novelty",
    "intra_list_diversity",
    "popularity_bias",
    "gini",
    "activity_buckets",
    "activity_thresholds",
    "breakdown",
    "RandomRecommender",
    "PopularityRecommender",
    "ItemKNNRecommender",
]
