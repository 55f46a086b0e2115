"""Run an experiment spec: one split, every model configuration fitted and scored on it, each a
nested MLflow child run under one parent run, plus the comparison report; or search the spec's
parameter spaces (:func:`search_experiment`) with the one search, ``pipelines.search.run_search``.

Both score on the holdout of recsys/evaluation/holdout.py: the spec's split in one id space,
:func:`~recsys.evaluation.holdout.top_k` and its ranking metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

from experiments.report import INDEX_KIND_PARAM
from experiments.spec import RANKING_METRICS, ExperimentSpec, ModelSpec, SpecError, SplitSpec, parse_metric
from pipelines import tracking
from pipelines.search import SEARCH_METRICS, Family, SearchConfig, SearchOutcome, TrialProgress, run_search
from recsys.datasets import Dataset, generate_synthetic, load_dataset
from recsys.evaluation import (
    activity_buckets,
    breakdown,
    intra_list_diversity,
    leave_last_n_split,
    novelty,
    per_user_metrics,
    popularity_bias,
    random_split,
    stratified_split,
    time_split,
)
from recsys.evaluation.bias import bias_report, user_attribute_labels
from recsys.evaluation.holdout import Holdout, rank_metrics, top_k
from recsys.evaluation.splits import Split
from recsys.matrix import InteractionMatrix
from recsys.models.base import TrainData
from recsys.models.config import ModelConfig
from recsys.models.registry import make_model, model_class
from recsys.settings import Settings

logger = logging.getLogger(__name__)

KIND_TAG = "recsys.experiment.kind"
SPEC_TAG = "recsys.experiment.spec"
CONFIG_TAG = "recsys.experiment.config"
MLFLOW_BREAKDOWN = "breakdown"


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def load_data(spec: ExperimentSpec, settings: Settings | None = None, base_dir: Path | None = None) -> Dataset:
    """The spec's dataset. Relative paths are taken from the working directory, else from
    ``base_dir`` (the spec file's folder)."""
    d = spec.dataset
    if d.format == "synthetic":
        params = {"seed": spec.seed, **d.params}
        return generate_synthetic(**params)
    if d.format == "feature_store":
        from feature_store import FeatureStore

        if settings is None:
            raise ValueError("dataset format feature_store needs settings")
        as_of = pd.Timestamp(d.as_of).to_pydatetime() if d.as_of else None
        return FeatureStore(settings.database_url).snapshot(as_of)
    path = Path(d.path).expanduser()
    if not path.is_absolute() and not path.exists() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if not path.exists():
        raise FileNotFoundError(f"dataset.path not found: {d.path}")
    return load_dataset(d.format, path, **d.params)


def make_split(events: pd.DataFrame, split: SplitSpec, seed: int) -> Split:
    if split.method == "random":
        return random_split(events, test_ratio=split.test_ratio, seed=seed)
    if split.method == "leave_last_n":
        return leave_last_n_split(events, n=split.n, seed=seed)
    if split.method == "time":
        return time_split(events, split.cutoff)
    return stratified_split(
        events, ratio=split.ratio, seed=seed, filter_by=split.filter_by, min_rating=split.min_rating
    )


def split_hash(split: Split) -> str:
    """sha256 (first 16 hex) of the sorted train and test event ids: equal hash, equal split."""
    h = hashlib.sha256()
    for part in (split.train, split.test):
        ids = np.sort(part["event_id"].to_numpy(dtype=str))
        h.update("\n".join(ids.tolist()).encode())
        h.update(b"\x00|")
    return h.hexdigest()[:16]


@dataclass
class PreparedData:
    """Everything every model of one experiment shares: the holdout (recsys/evaluation/holdout.py)
    of the spec's split, and what the metrics need beside it."""

    dataset: Dataset
    holdout: Holdout
    split_hash: str
    item_popularity: np.ndarray
    diversity_embeddings: np.ndarray | None
    user_attribute: str | None
    user_groups: pd.Series | None
    #: group label per user row for every user attribute (recsys.evaluation.bias)
    attribute_labels: dict[str, np.ndarray] = field(default_factory=dict)
    _matrices: dict = field(default_factory=dict)
    _features: dict = field(default_factory=dict)

    @property
    def split(self) -> Split:
        return self.holdout.split

    @property
    def user_ids(self) -> np.ndarray:
        return self.holdout.user_ids

    @property
    def item_ids(self) -> np.ndarray:
        return self.holdout.item_ids

    @property
    def test(self) -> sp.csr_matrix:
        return self.holdout.test

    @property
    def eval_users(self) -> np.ndarray:
        return self.holdout.users

    @property
    def binary_train(self) -> sp.csr_matrix:
        if "binary" not in self._matrices:
            binary = self.holdout.train.copy()
            binary.data = np.ones_like(binary.data)
            self._matrices["binary"] = binary
        return self._matrices["binary"]

    def train_matrix(self, weighting: str, alpha: float) -> sp.csr_matrix:
        key = (weighting, float(alpha))
        if key not in self._matrices:
            self._matrices[key] = self.holdout.train_matrix(weighting, alpha).matrix
        return self._matrices[key]

    def features(self, what: str, text: bool = False, exclude_keys: tuple[str, ...] = ()) -> sp.csr_matrix:
        from recsys.features import build_item_features, build_user_features

        key = (what, text, exclude_keys)
        if key not in self._features:
            if what == "items":
                self._features[key] = build_item_features(self.dataset.items, self.item_ids, text=text)[0]
            else:
                self._features[key] = build_user_features(self.dataset.users, self.user_ids, exclude_keys=exclude_keys)[
                    0
                ]
        return self._features[key]


def holdout_of(spec: ExperimentSpec, split: Split) -> Holdout:
    """The spec's split as the holdout every model is scored on."""
    if len(split.train) == 0 or len(split.test) == 0:
        raise ValueError(
            f"the {spec.split.method} split left {len(split.train)} train and {len(split.test)} test events; adjust split"
        )
    return Holdout.of_split(split, spec.split.method, spec.eval_users, spec.seed)


def prepare_data(spec: ExperimentSpec, dataset: Dataset, split: Split | None = None) -> PreparedData:
    split = split or make_split(dataset.events, spec.split, spec.split_seed)
    holdout = holdout_of(spec, split)
    counts = holdout.train.copy()
    counts.data = np.ones_like(counts.data)
    popularity = np.diff(sp.csc_matrix(counts).indptr).astype(np.float64)
    attribute, groups = _user_groups(spec, dataset.users, holdout.user_ids)
    return PreparedData(
        dataset=dataset,
        holdout=holdout,
        split_hash=split_hash(split),
        item_popularity=popularity,
        diversity_embeddings=_diversity_embeddings(dataset.items, holdout.item_ids)
        if "diversity" in spec.metrics
        else None,
        user_attribute=attribute,
        user_groups=groups,
        attribute_labels=user_attribute_labels(dataset.users, holdout.user_ids),
    )


def _diversity_embeddings(items: pd.DataFrame, item_ids: np.ndarray) -> np.ndarray | None:
    """TagEncoder item vectors (categories) when the catalogue has categories, else ``None``."""
    if not any(len(c) for c in items["categories"]):
        logger.info("items have no categories: intra-list diversity is not computed")
        return None
    return make_model("tags").fit(TrainData.catalog_only(items, item_ids)).item_vectors_


def _user_groups(
    spec: ExperimentSpec, users: pd.DataFrame, user_ids: np.ndarray
) -> tuple[str | None, pd.Series | None]:
    """The breakdown attribute and its value per matrix row (indexed by row)."""
    key = spec.breakdown_attribute
    if key is None or users.empty:
        return None, None
    attrs = users.set_index("user_id")["attributes"].reindex(pd.Index(user_ids.astype(str)))
    if key == "auto":
        keys: dict[str, None] = {}
        for a in attrs.dropna().head(1000):
            keys.update(dict.fromkeys(a))
        key = None
        for k in keys:
            values = attrs.map(lambda a, k=k: a.get(k) if isinstance(a, dict) else None)
            n = values.nunique(dropna=True)
            if 2 <= n <= 30 and values.notna().mean() >= 0.5:
                key = k
                break
        if key is None:
            return None, None
    values = attrs.map(lambda a: a.get(key) if isinstance(a, dict) else None)
    if values.notna().sum() == 0:
        logger.warning("no user has attribute %r: no attribute breakdown", key)
        return None, None
    return key, pd.Series(values.astype(object).to_numpy(), index=np.arange(len(user_ids)))


# ----------------------------------------------------------------------------------------------
# one model
# ----------------------------------------------------------------------------------------------


@dataclass
class ModelResult:
    config: ModelConfig
    metrics: dict[str, float]
    breakdown: pd.DataFrame | None = None
    run_id: str | None = None
    error: str | None = None
    #: the index kind training's choice picked for the model's user space (``index_recall_at_10``'s)
    index_kind: str | None = None


def fit_on_split(config: ModelConfig, data: PreparedData):
    """``pipelines.train.fit_model`` (the one fit path) on the shared train part."""
    from pipelines.train import fit_model as fit

    matrix = InteractionMatrix(
        matrix=data.train_matrix(config.weighting, config.alpha), user_ids=data.user_ids, item_ids=data.item_ids
    )
    return fit(config, matrix, data.dataset, events=data.split.train)


def evaluate(recommended: np.ndarray, data: PreparedData, ks: list[int], metrics: list[str]) -> dict[str, float]:
    """``<metric>_at_<k>`` for every requested metric and k of ``recommended``, the top-k of the
    evaluation users (``holdout.top_k``): ranking metrics and coverage from the holdout module,
    the beyond-accuracy ones beside them."""
    users = data.eval_users
    n_train_users = data.binary_train.shape[0]
    out: dict[str, float] = {}
    for k in ks:
        rec = recommended[:, :k]
        ranking = rank_metrics(rec, data.holdout, users, k)
        ranking[f"coverage_at_{k}"] = ranking.pop("coverage")
        out.update({f"{m}_at_{k}": ranking[f"{m}_at_{k}"] for m in (*RANKING_METRICS, "coverage") if m in metrics})
        if "novelty" in metrics:
            out[f"novelty_at_{k}"] = novelty(rec, data.item_popularity, n_users=n_train_users)
        if "diversity" in metrics and data.diversity_embeddings is not None:
            out[f"diversity_at_{k}"] = intra_list_diversity(rec, data.diversity_embeddings)
        if "avg_rec_popularity" in metrics or "gini" in metrics:
            bias = popularity_bias(rec, data.item_popularity)
            if "avg_rec_popularity" in metrics:
                out[f"avg_rec_popularity_at_{k}"] = bias["avg_rec_popularity"]
            if "gini" in metrics:
                out[f"gini_at_{k}"] = bias["gini_exposure"]
    return out


def user_breakdown(recommended: np.ndarray, data: PreparedData, k: int) -> pd.DataFrame:
    """Mean metrics at ``k`` per user-activity bucket and per value of the user attribute."""
    users = data.eval_users
    per_user = per_user_metrics(recommended[:, :k], data.test, k, user_rows=users, n_items_total=data.test.shape[1])
    cols = ["n_users", "precision", "recall", "ndcg", "map", "hit_rate", "mrr"]
    frames = []
    buckets = activity_buckets(data.binary_train, per_user["user_row"].to_numpy())
    by_activity = breakdown(per_user, pd.Series(buckets))
    frames.append(by_activity[cols].assign(dimension="activity"))
    if data.user_groups is not None:
        by_attr = breakdown(per_user, data.user_groups)
        frames.append(by_attr[cols].assign(dimension=data.user_attribute))
    out = pd.concat(frames).rename_axis("group").reset_index()
    out["group"] = out["group"].astype(str)
    out.insert(0, "k", k)
    return out[["dimension", "group", "k", *cols]]


@dataclass(frozen=True)
class IndexRecall:
    """The index training's choice picked for a model's user space, and its recall@10."""

    kind: str
    recall_at_10: float


def index_recall(model, n_queries: int, seed: int) -> IndexRecall | None:
    """Recall@10 against exact search of the index ``recsys train`` would serve this model's
    user space with (``IndexConfig`` defaults: the measured choice of recsys/index/choice.py;
    an Annoy index that found a scan faster is served by the scan: ``exact``, recall 1), on
    ``n_queries`` sampled user vectors."""
    if n_queries <= 0:
        return None
    from pipelines.train import IndexConfig
    from recsys.index import build_index

    # training's choice, under a budget per model that suits a comparison of many models
    config = IndexConfig(recall_queries=n_queries, tune_seconds=5.0, build_budget_seconds=15.0)
    queries = config.sample_queries(model.user_vectors_, np.random.default_rng(seed))
    index, choice = build_index(config.kind, model.metric, model.item_vectors_, queries, config.settings())
    picked = IndexRecall("exact", 1.0) if index.prefer_exact else IndexRecall(choice.kind, choice.chosen.recall_at_10)
    logger.info("index for %s: %s, recall@10 %.3f", model.kind, picked.kind, picked.recall_at_10)
    return picked


@dataclass
class Evaluation:
    """One configuration fitted and scored on the experiment's holdout."""

    metrics: dict[str, float]
    breakdown: pd.DataFrame | None = None
    index_kind: str | None = None


def fit_and_evaluate(
    config: ModelConfig,
    data: PreparedData,
    spec: ExperimentSpec,
    *,
    with_breakdown: bool = True,
    with_index: bool = True,
) -> Evaluation:
    """Fit on the shared train part, score on the shared test part: metrics (+ breakdown, and
    the chosen index's kind)."""
    start = time.perf_counter()
    model = fit_on_split(config, data)
    t_train = time.perf_counter() - start
    start = time.perf_counter()
    recommended = top_k(model, data.holdout, max(spec.k))
    metrics = evaluate(recommended, data, spec.k, spec.metrics)
    t_eval = time.perf_counter() - start
    metrics.update({"time_train_s": t_train, "time_eval_s": t_eval, "eval_users": float(len(data.eval_users))})
    picked = index_recall(model, spec.index_recall_queries, spec.seed) if with_index else None
    if picked is not None:
        metrics["index_recall_at_10"] = picked.recall_at_10
    if with_breakdown:
        metrics.update(bias_columns(model, recommended, data, spec))
    table = user_breakdown(recommended, data, spec.main_k) if with_breakdown else None
    return Evaluation(metrics, table, picked.kind if picked is not None else None)


def bias_columns(model, recommended: np.ndarray, data: PreparedData, spec: ExperimentSpec) -> dict[str, float]:
    """The bias report's numbers at the main k (``bias_…``; recsys.evaluation.bias): exposure
    amplification, the largest group gap over user attributes, the largest leakage AUC."""
    k = spec.main_k
    vectors = getattr(model, "user_vectors_", None)
    report = bias_report(
        recommended[:, :k],
        data.test,
        data.binary_train,
        k,
        user_rows=data.eval_users,
        attributes=data.attribute_labels,
        user_vectors=None if vectors is None else np.asarray(vectors)[: len(data.user_ids)],
        seed=spec.seed,
        n_boot=200,
    )
    return {
        "bias_amplification": report.amplification,
        "bias_max_group_gap": report.max_group_gap,
        "bias_max_leakage_auc": report.max_leakage_auc,
    }


# ----------------------------------------------------------------------------------------------
# the experiment
# ----------------------------------------------------------------------------------------------


@dataclass
class ExperimentResult:
    spec: ExperimentSpec
    parent_run_id: str
    split_hash: str
    results: list[ModelResult]
    comparison: pd.DataFrame
    report_dir: Path | None
    split_report: dict[str, Any] = field(default_factory=dict)


def config_params(config: ModelConfig) -> dict[str, Any]:
    out = {"kind": config.kind, "label": config.label, "weighting": config.weighting, "alpha": config.alpha}
    out.update({f"param.{k}": v for k, v in config.params.items()})
    if config.kind == "lightfm":
        f = config.features
        out.update(
            {"features.items": f.item_categories, "features.users": f.user_attributes, "features.text": f.item_text}
        )
    return out


def split_params(spec: ExperimentSpec, data: PreparedData) -> dict[str, Any]:
    s = spec.split
    out = {"split.method": s.method, "split.seed": spec.split_seed, "split_hash": data.split_hash}
    if s.method == "random":
        out["split.test_ratio"] = s.test_ratio
    elif s.method == "stratified":
        out.update({"split.ratio": s.ratio, "split.filter_by": s.filter_by, "split.min_rating": s.min_rating})
    elif s.method == "leave_last_n":
        out["split.n"] = s.n
    else:
        out["split.cutoff"] = s.cutoff
    return out


def default_report_dir(name: str) -> Path:
    return Path("reports") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def run_experiment(
    spec: ExperimentSpec,
    settings: Settings,
    *,
    base_dir: Path | None = None,
    spec_path: Path | None = None,
    report_dir: Path | None = None,
    dataset: Dataset | None = None,
    on_model: Callable[[str, int, int], None] | None = None,
) -> ExperimentResult:
    """Run every configuration of ``spec`` on one split, tracked as a parent run with one
    nested child run per configuration; write the report into ``report_dir``.

    ``on_model(name, i, n)`` is called before each configuration (progress display), and
    once more with ``i == n`` before the report is written.
    A configuration that fails is recorded (child run FAILED, ``error`` column) and the
    experiment goes on; only when every configuration fails is that an error.
    """
    from experiments import report as report_mod

    configs = spec.configs()
    dataset = dataset if dataset is not None else load_data(spec, settings, base_dir)
    data = prepare_data(spec, dataset)
    logger.info("split %s: %s", data.split_hash, data.split.report)
    exp_id = tracking.experiment_id(settings, spec.name)
    results: list[ModelResult] = []
    with tracking.start_run(
        exp_id,
        f"{spec.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}",
        tags={KIND_TAG: "parent", SPEC_TAG: spec.name},
    ) as parent:
        tracking.log_params_flat(
            {
                "dataset.format": spec.dataset.format,
                "dataset.path": spec.dataset.path,
                "seed": spec.seed,
                "k": ",".join(map(str, spec.k)),
                "n_configs": len(configs),
                "metrics": ",".join(spec.metrics),
                "breakdown_attribute": data.user_attribute,
                **split_params(spec, data),
            }
        )
        tracking.log_metrics_finite(
            {f"split_{k}": v for k, v in data.split.report.items() if isinstance(v, (int, float))}
        )
        if spec_path is not None:
            tracking.log_artifact(spec_path, "spec")
        for i, config in enumerate(configs):
            if on_model:
                on_model(config.name, i, len(configs))
            run_id = None
            try:
                with tracking.start_run(
                    exp_id,
                    config.name,
                    nested=True,
                    tags={KIND_TAG: "child", SPEC_TAG: spec.name, CONFIG_TAG: config.name},
                ) as child:
                    run_id = child.info.run_id
                    tracking.log_params_flat({**config_params(config), **split_params(spec, data)})
                    try:
                        evaluation = fit_and_evaluate(config, data, spec)
                    except Exception as exc:
                        tracking.set_tags({"recsys.experiment.error": f"{type(exc).__name__}: {exc}"[:500]})
                        raise  # leaving the block marks the child run FAILED
                    metrics, table = evaluation.metrics, evaluation.breakdown
                    if evaluation.index_kind is not None:
                        tracking.log_params_flat({INDEX_KIND_PARAM: evaluation.index_kind})
                    tracking.log_metrics_finite(metrics)
                    for k in spec.k:  # metric@k curves as steps too, for the MLflow UI
                        tracking.log_metrics_finite(
                            {
                                f"{m}_by_k": metrics[f"{m}_at_{k}"]
                                for m in ("ndcg", "precision", "recall")
                                if f"{m}_at_{k}" in metrics
                            },
                            step=k,
                        )
                    if table is not None:
                        with tempfile.TemporaryDirectory() as tmp:
                            path = Path(tmp) / "breakdown.csv"
                            table.to_csv(path, index=False)
                            tracking.log_artifact(path, MLFLOW_BREAKDOWN)
            except (ValueError, RuntimeError, TypeError, MemoryError, np.linalg.LinAlgError) as exc:
                logger.error("model %s failed: %s", config.name, exc)
                results.append(ModelResult(config, {}, None, run_id, error=f"{type(exc).__name__}: {exc}"))
                continue
            results.append(ModelResult(config, metrics, table, run_id, index_kind=evaluation.index_kind))
        if all(r.error for r in results):
            raise RuntimeError(
                "every model configuration failed: " + "; ".join(f"{r.config.name}: {r.error}" for r in results)
            )
        if on_model:
            on_model("writing the report", len(configs), len(configs))
        comparison = report_mod.comparison_frame(results)
        out_dir = Path(report_dir) if report_dir is not None else default_report_dir(spec.name)
        report_mod.write_report(
            comparison,
            out_dir,
            title=f"Experiment {spec.name}",
            ks=spec.k,
            main_k=spec.main_k,
            breakdowns={r.config.name: r.breakdown for r in results if r.breakdown is not None},
            context={
                "parent run": parent.info.run_id,
                "split hash": data.split_hash,
                "dataset": f"{spec.dataset.format} {spec.dataset.path or ''}".strip(),
                "split": ", ".join(f"{k}={v}" for k, v in split_params(spec, data).items()),
                "evaluated users": len(data.eval_users),
                "breakdown attribute": data.user_attribute or "—",
            },
        )
        tracking.log_artifact(out_dir, "report")
        parent_id = parent.info.run_id
    return ExperimentResult(spec, parent_id, data.split_hash, results, comparison, out_dir, data.split.report)


# ----------------------------------------------------------------------------------------------
# the search
# ----------------------------------------------------------------------------------------------


@dataclass
class ExperimentSearch:
    """A search over a spec's spaces: the one search's outcome, where its files went."""

    outcome: SearchOutcome
    metric: str
    #: one row per finished trial: family, kind, state, the metric, weighting, alpha, params
    trials: pd.DataFrame
    report_dir: Path
    out_path: Path | None


def searchable(spec: ExperimentSpec) -> list[ModelSpec]:
    """The spec's models ``recsys train`` can train from a search: not the reference baselines,
    not the content encoders (the spec's list, logged when some are left out)."""
    models = [m for m in spec.models if not (model_class(m.kind).reference or model_class(m.kind).needs_catalog)]
    skipped = [m.label() for m in spec.models if m not in models]
    if skipped:
        logger.info("not searched (recsys train cannot train them): %s", ", ".join(skipped))
    if not models:
        raise SpecError(
            "no model in the spec can be searched: baselines and content encoders are not trainable by `recsys train`"
        )
    return models


def search_families(spec: ExperimentSpec) -> list[Family]:
    """The spec's searchable models as the one search's declared families (unique names)."""
    models = searchable(spec)
    names: dict[str, int] = {}
    out = []
    for m in models:
        n = names[m.label()] = names.get(m.label(), 0) + 1
        out.append(m.family(m.label() if n == 1 else f"{m.label()}#{n}"))
    return out


def validation_split(spec: ExperimentSpec, split: Split) -> Split:
    """A second split of the train part (same method and seed), so test never picks parameters."""
    train = split.train
    if spec.split.method == "time":
        return time_split(train, train["timestamp"].quantile(0.8))
    return make_split(train, spec.split, spec.split_seed)


def search_config(spec: ExperimentSpec, trials: int | None = None) -> SearchConfig:
    """The one search's settings for a spec: its metric, method, trials and seed; no ensemble,
    no content space (the winner is one of the spec's configurations, or popularity when
    nothing in the space beats it); every trial runs (no patience, no wall-clock cap)."""
    name, k = parse_metric(spec.search.metric)
    if name not in SEARCH_METRICS:
        raise SpecError(
            f"search.metric: the search maximizes a per-user ranking metric ({', '.join(SEARCH_METRICS)}); got {name!r}"
        )
    n = trials or spec.search.trials
    return SearchConfig(
        trials=n,
        max_seconds=math.inf,
        patience=n,
        k=k,
        seed=spec.seed,
        metric=name,
        method=spec.search.method,
        content="none",
        ensemble=False,
    )


def train_config_yaml(config: ModelConfig, spec: ExperimentSpec, metric: str, score: float, parent_run_id: str) -> str:
    header = (
        f"# Best configuration of `recsys experiment search` over {spec.name}\n"
        f"# {metric} = {score:.6f} on the {spec.search.holdout} holdout of a {spec.split.method} split (seed {spec.split_seed});\n"
        f"# search run {parent_run_id}. Train it with: recsys train --config <this file>\n"
    )
    model = config.model_dump(mode="json", exclude={"name"})
    return header + yaml.safe_dump({"model": model, "seed": spec.seed}, sort_keys=False)


def trials_table(outcome: SearchOutcome, metric: str) -> pd.DataFrame:
    """The search's trials, best first, with each configuration's fields as columns."""
    rows = []
    for _, t in outcome.trials.iterrows():
        config = ModelConfig.model_validate(t["config"]) if isinstance(t["config"], dict) else None
        rows.append(
            {
                "trial": int(t["trial"]),
                "family": t["family"],
                "kind": t["kind"],
                "state": t["state"],
                metric: t["value"],
                "weighting": config.weighting if config else None,
                "alpha": config.alpha if config else None,
                "params": json.dumps(config.params, default=str) if config else None,
                "run_id": t["run_id"],
                "seconds": t["seconds"],
            }
        )
    return pd.DataFrame(rows).sort_values(metric, ascending=False, na_position="last").reset_index(drop=True)


def search_experiment(
    spec: ExperimentSpec,
    settings: Settings,
    *,
    trials: int | None = None,
    out: Path | None = None,
    base_dir: Path | None = None,
    dataset: Dataset | None = None,
    report_dir: Path | None = None,
    on_trial: Callable[[TrialProgress], None] | None = None,
) -> ExperimentSearch:
    """Search the spec's parameter spaces with the one search (``pipelines.search.run_search``)
    on the spec's split — a validation split of its train part unless ``search.holdout: test``
    — tracked in the spec's MLflow experiment; writes ``trials.csv`` and ``best.yaml`` (a
    ``recsys train --config`` file) into ``report_dir``, and the latter to ``out`` too."""
    config = search_config(spec, trials)
    families = search_families(spec)
    dataset = dataset if dataset is not None else load_data(spec, settings, base_dir)
    split = make_split(dataset.events, spec.split, spec.split_seed)
    if spec.search.holdout == "validation":
        split = validation_split(spec, split)
    holdout = holdout_of(spec, split)
    outcome = run_search(
        settings,
        dataset,
        config,
        space=families,
        holdout=holdout,
        experiment=spec.name,
        tags={KIND_TAG: "search", SPEC_TAG: spec.name, "recsys.experiment.split_hash": split_hash(split)},
        on_trial=on_trial,
    )
    table = trials_table(outcome, config.key)
    text = train_config_yaml(outcome.winner, spec, spec.search.metric, outcome.score, outcome.parent_run_id)
    folder = Path(report_dir) if report_dir is not None else default_report_dir(f"{spec.name}-search")
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "trials.csv", index=False)
    (folder / "best.yaml").write_text(text)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return ExperimentSearch(outcome, config.key, table, folder, out)
