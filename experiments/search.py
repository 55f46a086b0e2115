"""Hyperparameter search over a spec's parameter spaces: random (lists and ranges sampled) or
grid (every combination), each trial a nested MLflow child run; the best configuration is
written as a ``pipelines.train.TrainConfig`` YAML (what ``recsys train --config`` reads).

Only kinds ``recsys train`` can train are searched: the collaborative embedders of
``recsys.models.registry`` (not the baselines, not the content encoders).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from experiments import runner
from experiments.spec import ExperimentSpec, SpecError, parse_metric
from pipelines import tracking
from recsys.datasets import Dataset
from recsys.evaluation.splits import Split
from recsys.models.config import ModelConfig
from recsys.models.registry import model_class
from recsys.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class SearchResult:
    parent_run_id: str
    metric: str
    trials: pd.DataFrame
    best: ModelConfig
    best_score: float
    out_path: Path | None


def searchable(spec: ExperimentSpec):
    models = [m for m in spec.models if not (model_class(m.kind).reference or model_class(m.kind).needs_catalog)]
    skipped = [m.label() for m in spec.models if m not in models]
    if skipped:
        logger.info("not searched (recsys train cannot train them): %s", ", ".join(skipped))
    if not models:
        raise SpecError(
            "no model in the spec can be searched: baselines and content encoders are not trainable by `recsys train`"
        )
    return models


def candidates(spec: ExperimentSpec, trials: int, seed: int | None = None) -> list[ModelConfig]:
    """The configurations to try: ``trials`` of them (fewer when a grid is smaller)."""
    models = searchable(spec)
    rng = np.random.default_rng(spec.seed if seed is None else seed)
    if spec.search.method == "grid":
        grid = [c for m in models for c in m.grid(for_search=True)]
        if len(grid) > trials:
            pick = np.sort(rng.choice(len(grid), trials, replace=False))
            grid = [grid[i] for i in pick]
        return name_trials(grid)
    out: list[ModelConfig] = []
    seen: set[str] = set()
    spaces = [m for m in models if m.has_ranges() or m.n_grid() > 1] or models
    found = {id(m): 0 for m in spaces}
    attempts = 0
    while len(out) < trials and spaces and attempts < trials * 50:
        m = spaces[len(out) % len(spaces)]
        attempts += 1
        c = m.sample(rng)
        key = json.dumps([c.kind, c.label, c.params, c.weighting, c.alpha], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append(c)
            found[id(m)] += 1
        if not m.has_ranges() and found[id(m)] >= m.n_grid():  # grid exhausted
            spaces = [s for s in spaces if s is not m]
    return name_trials(out)


def name_trials(configs: list[ModelConfig]) -> list[ModelConfig]:
    for i, c in enumerate(configs):
        c.name = f"trial{i:03d}-{c.label}"
    return configs


def validation_split(spec: ExperimentSpec, split: Split) -> Split:
    """A second split of the train part (same method and seed), so test never picks parameters."""
    train = split.train
    if spec.split.method == "time":
        cutoff = train["timestamp"].quantile(0.8)
        from recsys.evaluation import time_split

        return time_split(train, cutoff)
    return runner.make_split(train, spec.split, spec.split_seed)


def train_config_yaml(config: ModelConfig, spec: ExperimentSpec, metric: str, score: float, parent_run_id: str) -> str:
    header = (
        f"# Best configuration of `recsys experiment search` over {spec.name}\n"
        f"# {metric} = {score:.6f} on the {spec.search.holdout} holdout of a {spec.split.method} split (seed {spec.split_seed});\n"
        f"# search run {parent_run_id}. Train it with: recsys train --config <this file>\n"
    )
    model = config.model_dump(mode="json", exclude={"name"})
    return header + yaml.safe_dump({"model": model, "seed": spec.seed}, sort_keys=False)


def run_search(
    spec: ExperimentSpec,
    settings: Settings,
    *,
    trials: int | None = None,
    out: Path | None = None,
    base_dir: Path | None = None,
    dataset: Dataset | None = None,
    report_dir: Path | None = None,
    on_trial: Callable[[str, int, int], None] | None = None,
) -> SearchResult:
    trials = trials or spec.search.trials
    metric_name, metric_k = parse_metric(spec.search.metric)
    key = f"{metric_name}_at_{metric_k}"
    lower_better = metric_name in ("avg_rec_popularity", "gini")
    configs = candidates(spec, trials)
    dataset = dataset if dataset is not None else runner.load_data(spec, settings, base_dir)
    split = runner.make_split(dataset.events, spec.split, spec.split_seed)
    if spec.search.holdout == "validation":
        split = validation_split(spec, split)
    data = runner.prepare_data(spec, dataset, split)
    exp_id = tracking.experiment_id(settings, spec.name)
    rows = []
    with tracking.start_run(
        exp_id,
        f"{spec.name}-search-{datetime.now().strftime('%Y%m%d-%H%M%S')}",
        tags={runner.KIND_TAG: "search", runner.SPEC_TAG: spec.name},
    ) as parent:
        tracking.log_params_flat(
            {
                "search.method": spec.search.method,
                "search.metric": key,
                "search.holdout": spec.search.holdout,
                "search.trials": len(configs),
                "dataset.format": spec.dataset.format,
                "dataset.path": spec.dataset.path,
                **runner.split_params(spec, data),
            }
        )
        for i, config in enumerate(configs):
            if on_trial:
                on_trial(config.name, i, len(configs))
            row = {
                "trial": config.name,
                "kind": config.kind,
                "params": json.dumps(config.params, default=str),
                "weighting": config.weighting,
                "alpha": config.alpha,
            }
            try:
                with tracking.start_run(
                    exp_id,
                    config.name,
                    nested=True,
                    tags={runner.KIND_TAG: "trial", runner.SPEC_TAG: spec.name, runner.CONFIG_TAG: config.name},
                ) as child:
                    row["run_id"] = child.info.run_id
                    tracking.log_params_flat({**runner.config_params(config), **runner.split_params(spec, data)})
                    metrics, _ = runner.fit_and_evaluate(config, data, spec, with_breakdown=False, with_index=False)
                    tracking.log_metrics_finite(metrics)
                    row.update(metrics)
            except (ValueError, RuntimeError, TypeError, MemoryError, np.linalg.LinAlgError) as exc:
                logger.error("trial %s failed: %s", config.name, exc)
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
        table = pd.DataFrame(rows)
        if key not in table or table[key].notna().sum() == 0:
            raise RuntimeError(
                f"no trial produced {key}: " + "; ".join(str(e) for e in table.get("error", pd.Series()).dropna())
            )
        best_i = table[key].idxmin() if lower_better else table[key].idxmax()
        best, score = configs[int(best_i)], float(table.loc[best_i, key])
        tracking.log_metrics_finite({f"best_{key}": score})
        tracking.log_params_flat(
            {
                "best.trial": best.name,
                "best.kind": best.kind,
                "best.params": json.dumps(best.params, default=str),
                "best.weighting": best.weighting,
                "best.alpha": best.alpha,
            }
        )
        text = train_config_yaml(best, spec, spec.search.metric, score, parent.info.run_id)
        report_dir = (
            Path(report_dir)
            if report_dir is not None
            else Path("reports") / f"{spec.name}-search-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        )
        report_dir.mkdir(parents=True, exist_ok=True)
        table.sort_values(key, ascending=lower_better).to_csv(report_dir / "trials.csv", index=False)
        (report_dir / "best.yaml").write_text(text)
        tracking.log_artifact(report_dir, "search")
        if out is not None:
            out = Path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        parent_id = parent.info.run_id
    return SearchResult(parent_id, key, table, best, score, out)
