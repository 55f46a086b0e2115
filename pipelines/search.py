"""`recsys train` with no config: search for a good model on the snapshot, then train the winner.

1. **Validation split by time**: the newest ``validation_ratio`` of events (one global cutoff)
   are the validation holdout; every user's earlier events train. Nothing later than the cutoff
   reaches a trial, so the choice cannot lean on the future it is scored against.
2. **Trials** (Optuna TPE, seeded, sequential): each picks a family — ALS (confidence / BM25
   weighting), EASE (only when the catalog is small enough for its item×item matrix), LightFM
   with the catalog's side features (when items or users have attributes), BPR, item-kNN,
   item2vec — and its parameters, fits on the validation train part and scores nDCG@10 on the
   validation holdout. A trial first scores half the validation users and reports it, so the
   median pruner stops clearly bad trials early. A sample of validation users is also scored
   as serving folds them in (the model's own ``fold_in`` over their train row): a model whose
   fold-in does worse than its trained vectors has its score scaled down by that ratio. Popularity is scored once as the baseline.
   Every trial is an MLflow child run of the search's parent run (params, metrics, time).
3. **Ensemble**: the best configuration of the top families, blended by
   ``recsys.models.ensemble`` (per-user standardized scores) with weights chosen on validation;
   members reuse their trial's fitted model (refitted only when the leader's weighting differs).
4. **Content space** (when items have titles, descriptions or categories): TF-IDF, or
   Sentence-BERT when the ``text`` extra is installed, fitted before the trials; its blend
   weight chosen on validation with the winner's validation fit (no refit).
5. The winner is refitted on all data and registered/promoted by ``pipelines.train.train``;
   its validation fit and split are its holdout evaluation (one fit serves both).

The space is either these built-in families or one the caller declares (:class:`Family`: each
dimension a :class:`Choice` or a :class:`Span`; ``recsys experiment search`` maps a spec's
models onto it), sampled by TPE, at random or walked as a grid (``SearchConfig.method``), scored
by any per-user ranking metric (``SearchConfig.metric``) on the validation holdout or on a
given one (an experiment spec's split).

The budget is a number of trials (``trials``: the same data and budget give the same winner);
``max_seconds`` caps wall-clock time — no trial starts that the measured times project past it
with the ensemble, content blend and the winner's final fit still to do (:class:`_Budget`);
the search also stops once ``patience`` trials in a row brought no improvement. The study lives in ``$RECSYS_DATA_DIR/search/optuna.db`` (RDB
storage): a search that crashed resumes where it stopped — completed trials are not redone.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipelines import tracking
from pipelines.steps import HoldoutFit, TrainedModel
from pipelines.train import (
    ContentConfig,
    HybridConfig,
    TrainConfig,
    TrainResult,
    fit_model,
    train,
)
from recsys.datasets.base import Dataset, DatasetError
from recsys.evaluation.holdout import Holdout, HoldoutConfig, score_vectors, top_k
from recsys.evaluation.metrics import per_user_metrics, ranking_metrics_at_k
from recsys.hybrid import history_profiles, hybrid_top_k
from recsys.matrix import InteractionMatrix
from recsys.models.base import TrainData
from recsys.models.config import FeatureConfig, ModelConfig
from recsys.models.ensemble import EnsembleEmbedder
from recsys.models.registry import make_model
from recsys.settings import Settings

logger = logging.getLogger(__name__)

SEARCH_TAG = "recsys.search"
#: EASE and item-kNN vectors are n_items wide: only for catalogs up to this size
MAX_ITEMS_ITEM_ITEM = 5_000
#: candidate content blend weights (0: collaborative only)
CONTENT_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
#: the metrics a search can maximize: per-user ranking metrics (the one-standard-error rule of
#: :func:`choose` needs each user's score)
SEARCH_METRICS = ("ndcg", "precision", "recall", "map", "hit_rate", "mrr")
#: candidate weights of the second and third ensemble members (the best member weighs 1)
ENSEMBLE_WEIGHTS = (0.0, 0.25, 0.5, 1.0)


def parse_duration(text: str) -> float:
    """``90s`` / ``10m`` / ``1h`` / ``7d`` / ``600`` → seconds (ValueError naming the format otherwise)."""
    text = str(text).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            value = float(text[:-1]) * units[text[-1]]
        else:
            value = float(text)
    except ValueError:
        raise ValueError(f"a duration looks like 90s, 10m or 1h; got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a duration must be positive; got {text!r}")
    return value


@dataclass
class SearchConfig:
    #: trials (the deterministic budget) and a wall-clock cap for the whole search
    trials: int = 30
    max_seconds: float = 600.0
    #: stop after this many completed trials in a row without a better score
    patience: int = 15
    validation_ratio: float = 0.1
    #: widen the validation slice (up to ``max_validation_ratio``) until this many users are in it:
    #: a slice a few dozen users wide cannot tell models apart
    min_validation_users: int = 300
    max_validation_ratio: float = 0.3
    k: int = 10
    seed: int = 42
    #: evaluate on at most this many validation users (seeded sample)
    eval_users: int = 5_000
    #: ``auto``: Sentence-BERT when installed, else TF-IDF, when items have text; ``none``: no content
    content: str = "auto"
    #: families to search (default: every one the data allows)
    families: tuple[str, ...] | None = None
    #: fewer validation users than this: too little data to compare models, popularity wins
    min_eval_users: int = 5
    #: validation users (seeded sample) also scored as serving folds them in (0: off): a
    #: trial's score is scaled down by how much worse its fold-in is than its trained vectors
    fold_in_users: int = 200
    #: the per-user ranking metric at ``k`` every trial is scored by (one of ``SEARCH_METRICS``)
    metric: str = "ndcg"
    #: how trials are drawn: ``tpe`` (after the starting points), ``random``, or ``grid`` (every
    #: combination of a declared space's choices, at most ``trials`` of them, seeded)
    method: Literal["tpe", "random", "grid"] = "tpe"
    #: also blend the top families into an ensemble candidate
    ensemble: bool = True

    def __post_init__(self) -> None:
        if self.metric not in SEARCH_METRICS:
            raise ValueError(f"the search maximizes one of {', '.join(SEARCH_METRICS)}; got {self.metric!r}")

    @property
    def key(self) -> str:
        """The metric's name in MLflow: ``ndcg_at_10``."""
        return f"{self.metric}_at_{self.k}"


@dataclass
class SearchOutcome:
    winner: ModelConfig
    score: float
    popularity_score: float
    content: ContentConfig | None
    hybrid: HybridConfig
    parent_run_id: str
    study_name: str
    trials: pd.DataFrame
    seconds: float
    notes: list[str] = field(default_factory=list)
    #: the winner fitted on the validation split, with that split: the holdout evaluation of
    #: the winner's training (one fit serves both; None when the search has no fit of it)
    holdout_fit: HoldoutFit | None = None

    @property
    def lift(self) -> float:
        return self.score / self.popularity_score if self.popularity_score > 0 else math.inf


# ----------------------------------------------------------------------------------------------
# validation data
# ----------------------------------------------------------------------------------------------


class Validation:
    """The validation holdout (recsys/evaluation/holdout.py: the newest events, widened until
    enough users are in it; or a given one), its matrices per weighting and the scorer of the
    search's metric every trial uses."""

    def __init__(self, dataset: Dataset, config: SearchConfig, holdout: Holdout | None = None) -> None:
        self.dataset, self.k, self.metric = dataset, config.k, config.metric
        self.holdout = holdout if holdout is not None else self._time_holdout(dataset, config)
        self.split = self.holdout.split
        self.user_ids, self.item_ids = self.holdout.user_ids, self.holdout.item_ids
        self.seen, self.test, self.users = self.holdout.train, self.holdout.test, self.holdout.users
        users = self.users
        self.first_half = users[np.random.default_rng(config.seed).permutation(len(users))[: max(1, len(users) // 2)]]
        self.first_half.sort()
        n_fold_in = min(config.fold_in_users, len(users))
        self.fold_in_users = np.sort(np.random.default_rng(config.seed + 1).choice(users, n_fold_in, replace=False))
        self._matrices: dict[tuple[str, float], InteractionMatrix] = {}

    @staticmethod
    def _time_holdout(dataset: Dataset, config: SearchConfig) -> Holdout:
        ratio = config.validation_ratio
        while True:
            holdout_config = HoldoutConfig(
                kind="time", test_ratio=ratio, eval_users=config.eval_users, seed=config.seed
            )
            holdout = Holdout.build(dataset.events, holdout_config, require_test=False)
            if (
                holdout.split.report["n_test_users"] >= config.min_validation_users
                or ratio >= config.max_validation_ratio
            ):
                return holdout
            ratio = min(config.max_validation_ratio, ratio + 0.05)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def matrix(self, config: ModelConfig) -> InteractionMatrix:
        key = (config.weighting, float(config.alpha))
        if key not in self._matrices:
            self._matrices[key] = config.matrix(self.split.train, self.user_ids, self.item_ids)
        return self._matrices[key]

    def fit(self, config: ModelConfig):
        return fit_model(config, self.matrix(config), self.dataset, events=self.split.train)

    def value(
        self, user_vectors: np.ndarray, item_vectors: np.ndarray, metric: str, users: np.ndarray | None = None
    ) -> float:
        """The search's metric at k of ``users`` (default: every validation user)."""
        users = self.users if users is None else users
        if len(users) == 0:
            return 0.0
        scores = score_vectors(self.holdout, users, user_vectors, item_vectors, metric, self.k)
        return scores[f"{self.metric}_at_{self.k}"]

    def per_user(self, model) -> np.ndarray:
        """The search's metric at k of every validation user (row order of ``self.users``)."""
        top = top_k(model, self.holdout, self.k)
        frame = per_user_metrics(top, self.test, self.k, user_rows=self.users)
        return frame.set_index("user_row")[self.metric].reindex(self.users).fillna(0.0).to_numpy(np.float64)

    def fold_in_ratio(self, model, config: ModelConfig) -> float:
        """The metric of ``fold_in_users`` folded in from their validation-train row through the
        model's own ``fold_in`` (with the training matrix's weights: the path serving takes for
        a user with events newer than the model), over theirs from the trained vectors.
        1.0 when there is nothing to compare."""
        users = self.fold_in_users
        if len(users) == 0 or model.user_vectors_ is None:
            return 1.0
        trained = self.value(model.user_vectors_, model.item_vectors_, model.metric, users)
        if trained <= 0:
            return 1.0
        matrix = self.matrix(config).matrix
        folded = np.zeros((matrix.shape[0], model.item_vectors_.shape[1]), np.float32)
        for u in users:
            row = matrix[u]
            folded[u] = model.fold_in(row.indices, row.data)
        return self.value(folded, model.item_vectors_, model.metric, users) / trained

    def score(self, model, users: np.ndarray | None = None) -> float:
        if model.user_vectors_ is None:
            raise ValueError(f"{model.kind} has no vector form on this catalog")
        return self.value(model.user_vectors_, model.item_vectors_, model.metric, users)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for part in (self.split.train, self.split.test):
            # ids hashed as strings (categorical codes depend on the categories), timestamps
            # as their values: no string copy of every timestamp (1 s at 100k events)
            cols = pd.DataFrame(
                {
                    "user_id": part["user_id"].astype(str),
                    "item_id": part["item_id"].astype(str),
                    "timestamp": pd.to_datetime(part["timestamp"]),
                }
            )
            h.update(pd.util.hash_pandas_object(cols, index=False).to_numpy().tobytes())
        return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# search spaces
# ----------------------------------------------------------------------------------------------


def _has_attributes(frame: pd.DataFrame) -> bool:
    return not frame.empty and "attributes" in frame and bool(frame["attributes"].map(lambda a: bool(a)).any())


def _has_categories(items: pd.DataFrame) -> bool:
    return not items.empty and bool(items["categories"].map(len).any())


def has_text(items: pd.DataFrame) -> bool:
    """Items carry something a content encoder can use: titles, descriptions or categories."""
    if items.empty:
        return False
    texts = items["title"].fillna("").astype(str).str.strip() + items["description"].fillna("").astype(str).str.strip()
    return bool((texts != "").any()) or _has_categories(items)


def families(validation: Validation, config: SearchConfig) -> tuple[list[str], list[str]]:
    """The families to search, and log lines saying why any was left out."""
    notes = []
    wanted = list(config.families or ("als", "ease", "lightfm", "bpr", "itemknn", "item2vec"))
    if validation.n_items > MAX_ITEMS_ITEM_ITEM:
        for kind in ("ease", "itemknn"):
            if kind in wanted:
                wanted.remove(kind)
                notes.append(
                    f"{kind} left out: {validation.n_items} items exceed {MAX_ITEMS_ITEM_ITEM} "
                    f"(its item×item matrix would take {validation.n_items**2 * 8 / 1e9:.1f} GB)"
                )
    elif "ease" in wanted:
        notes.append(f"ease searched: {validation.n_items} items fit its item×item matrix")
    ds = validation.dataset
    if "lightfm" in wanted:
        if _has_categories(ds.items) or _has_attributes(ds.users):
            notes.append("lightfm searched with the catalog's side features")
        else:
            notes.append("lightfm searched without side features (no item categories, no user attributes)")
    return wanted, notes


#: one sensible starting point per family, tried first (in this order) so every family is
#: measured before TPE narrows down; parameter names as in :func:`suggest`
STARTING_POINTS: dict[str, list[dict[str, Any]]] = {
    "als": [
        {
            "als.weighting": "confidence",
            "als.alpha": 2.0,
            "als.factors": 32,
            "als.regularization": 1.0,
            "als.iterations": 15,
        },
        {"als.weighting": "bm25", "als.factors": 64, "als.regularization": 0.1, "als.iterations": 15},
    ],
    "ease": [{"ease.l2": 500.0, "ease.dropout": 0.25}],
    "lightfm": [
        {
            "lightfm.user_features": False,
            "lightfm.no_components": 64,
            "lightfm.learning_rate": 0.03,
            "lightfm.epochs": 20,
            "lightfm.item_alpha": 1e-6,
        }
    ],
    "bpr": [{"bpr.factors": 64, "bpr.learning_rate": 0.01, "bpr.regularization": 0.001, "bpr.iterations": 100}],
    "itemknn": [{"itemknn.K": 100, "itemknn.weighting": "none"}],
    # a wide window (the whole history as context) and many epochs: with short windows or few
    # epochs the vectors stay near their random start on catalogs of a few thousand items
    # (MovieLens 100K validation nDCG@10: window 10 / 5 epochs 0.010, 20 / 20 0.022, 50 / 10 0.077,
    # 100 / 20 0.169 in 36 s, 200 / 30 0.174 in 86 s; popularity 0.170)
    "item2vec": [
        {
            "item2vec.factors": 64,
            "item2vec.window": 100,
            "item2vec.epochs": 20,
            "item2vec.negative": 5,
            "item2vec.ns_exponent": 0.75,
            "item2vec.sample": 0.0,
        }
    ],
}


def suggest(trial, kind: str, validation: Validation) -> ModelConfig:
    """The trial's configuration of family ``kind`` (parameter names are prefixed by the kind,
    so each family keeps its own distributions in TPE)."""
    ds = validation.dataset
    if kind == "als":
        weighting = trial.suggest_categorical("als.weighting", ["confidence", "bm25"])
        alpha = trial.suggest_float("als.alpha", 0.1, 30.0, log=True) if weighting == "confidence" else 1.0
        params = {
            "factors": trial.suggest_categorical("als.factors", [16, 32, 64, 128]),
            "regularization": trial.suggest_float("als.regularization", 1e-3, 30.0, log=True),
            "iterations": trial.suggest_int("als.iterations", 10, 30, step=5),
        }
        return ModelConfig(kind="als", params=params, weighting=weighting, alpha=alpha)
    if kind == "ease":
        params = {
            "l2": trial.suggest_float("ease.l2", 10.0, 5000.0, log=True),
            "dropout": trial.suggest_float("ease.dropout", 0.0, 0.6),
        }
        return ModelConfig(kind="ease", params=params, weighting="none", alpha=1.0)
    if kind == "lightfm":
        users = _has_attributes(ds.users) and trial.suggest_categorical("lightfm.user_features", [True, False])
        params = {
            "no_components": trial.suggest_categorical("lightfm.no_components", [32, 64]),
            "loss": "warp",
            "learning_rate": trial.suggest_float("lightfm.learning_rate", 0.005, 0.1, log=True),
            "epochs": trial.suggest_int("lightfm.epochs", 10, 30, step=10),
            "item_alpha": trial.suggest_float("lightfm.item_alpha", 1e-7, 1e-3, log=True),
            "num_threads": 1,
        }
        return ModelConfig(
            kind="lightfm",
            params=params,
            weighting="none",
            alpha=1.0,
            features=FeatureConfig(item_categories=_has_categories(ds.items), user_attributes=bool(users)),
        )
    if kind == "bpr":
        params = {
            "factors": trial.suggest_categorical("bpr.factors", [32, 64, 128]),
            "learning_rate": trial.suggest_float("bpr.learning_rate", 1e-3, 0.1, log=True),
            "regularization": trial.suggest_float("bpr.regularization", 1e-4, 0.1, log=True),
            "iterations": trial.suggest_int("bpr.iterations", 50, 200, step=50),
            "num_threads": 1,
        }  # hogwild SGD is only reproducible on one thread
        return ModelConfig(kind="bpr", params=params, weighting="none", alpha=1.0)
    if kind == "itemknn":
        return ModelConfig(
            kind="itemknn",
            params={"K": trial.suggest_int("itemknn.K", 10, 500, log=True)},
            weighting=trial.suggest_categorical("itemknn.weighting", ["none", "bm25"]),
            alpha=1.0,
        )
    if kind == "item2vec":
        params = {
            "factors": trial.suggest_categorical("item2vec.factors", [32, 64, 128]),
            "window": trial.suggest_int("item2vec.window", 5, 500, log=True),
            "epochs": trial.suggest_int("item2vec.epochs", 10, 50, step=10),
            "negative": trial.suggest_int("item2vec.negative", 5, 10, step=5),
            "ns_exponent": trial.suggest_float("item2vec.ns_exponent", -0.5, 1.0),
            "sample": trial.suggest_categorical("item2vec.sample", [0.0, 1e-4, 1e-3]),
        }
        return ModelConfig(kind="item2vec", params=params, weighting="none", alpha=1.0)
    raise ValueError(f"no search space for model kind {kind!r}")


@dataclass(frozen=True)
class Choice:
    """A dimension taking one of ``values`` (categorical in TPE; a grid axis)."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class Span:
    """A dimension uniform in [low, high] (log-uniform with ``log``; integers with ``integer``)."""

    low: float
    high: float
    log: bool = False
    integer: bool = False


#: a dimension's name: ``weighting``, ``alpha`` or a model parameter
Dimension = Choice | Span


@dataclass(frozen=True)
class Family:
    """A declared family of a search space: ``config`` with each of ``dimensions`` drawn by the
    trial (parameter names prefixed by ``name``, unique in the space, so each family keeps its
    own distributions in TPE)."""

    name: str
    config: ModelConfig
    dimensions: Mapping[str, Dimension] = field(default_factory=dict)

    def suggest(self, trial) -> ModelConfig:
        drawn = {}
        for dim, space in self.dimensions.items():
            key = f"{self.name}.{dim}"
            if isinstance(space, Choice):
                drawn[dim] = trial.suggest_categorical(key, list(space.values))
            elif space.integer:
                drawn[dim] = trial.suggest_int(key, int(space.low), int(space.high), log=space.log)
            else:
                drawn[dim] = trial.suggest_float(key, space.low, space.high, log=space.log)
        return self.at(drawn)

    def at(self, drawn: Mapping[str, Any]) -> ModelConfig:
        """``config`` with the drawn dimensions."""
        params = {**self.config.params, **{k: v for k, v in drawn.items() if k not in ("weighting", "alpha")}}
        update: dict[str, Any] = {"params": params}
        if "weighting" in drawn:
            update["weighting"] = drawn["weighting"]
        if "alpha" in drawn:
            update["alpha"] = float(drawn["alpha"])
        return self.config.model_copy(update=update)

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the choices, as enqueued trial parameters (``kind`` included)."""
        spans = [dim for dim, space in self.dimensions.items() if isinstance(space, Span)]
        if spans:
            raise ValueError(f"{self.name}: {spans[0]} is a range; a grid search needs lists")
        dims = list(self.dimensions)
        axes = [self.dimensions[d].values for d in dims]
        return [
            {"kind": self.name, **{f"{self.name}.{d}": v for d, v in zip(dims, combo)}}
            for combo in itertools.product(*axes)
        ]

    def size(self) -> int | None:
        """How many configurations the family holds (None: a range makes it unbounded)."""
        if any(isinstance(space, Span) for space in self.dimensions.values()):
            return None
        return math.prod(len(space.values) for space in self.dimensions.values())

    def fingerprint(self) -> str:
        spaces = {d: repr(space) for d, space in sorted(self.dimensions.items())}
        return json.dumps([self.name, self.config.model_dump(mode="json"), spaces], sort_keys=True, default=str)


@dataclass(frozen=True)
class SearchSpace:
    """What trials draw from: the family names (the trial's ``kind`` parameter), the trials
    tried first (enqueued parameters) and, per family, how a trial becomes a configuration."""

    kinds: list[str]
    starts: list[dict[str, Any]]
    notes: list[str]
    declared: dict[str, Family]
    validation: Validation
    #: part of the study's name: another space is another study
    key: str

    @classmethod
    def built_in(cls, validation: Validation, config: SearchConfig) -> SearchSpace:
        """The families of :func:`suggest` the data allows, their starting points first."""
        if config.method == "grid":
            raise ValueError("a grid search needs a declared space (lists of values to walk)")
        kinds, notes = families(validation, config)
        starts = [{"kind": kind, **point} for kind in kinds for point in STARTING_POINTS.get(kind, [])]
        if config.method == "random":
            starts = []
        key = "-".join(kinds) if config.method == "tpe" else f"{config.method}-" + "-".join(kinds)
        return cls(kinds, starts, notes, {}, validation, key)

    @classmethod
    def of(cls, declared: list[Family], validation: Validation, config: SearchConfig) -> SearchSpace:
        """A declared space; with ``method: grid`` every combination is enqueued (at most
        ``trials``, a seeded sample of them, in grid order)."""
        names = [f.name for f in declared]
        if not declared or len(set(names)) != len(names):
            raise ValueError(f"a declared search space needs families with unique names; got {names}")
        starts: list[dict[str, Any]] = []
        if config.method == "grid":
            starts = [point for f in declared for point in f.grid()]
            if len(starts) > config.trials:
                pick = np.sort(np.random.default_rng(config.seed).choice(len(starts), config.trials, replace=False))
                starts = [starts[i] for i in pick]
        # a sample of a grid is another set of trials: a study of its own
        digest = hashlib.sha256("|".join([*(f.fingerprint() for f in declared), repr(starts)]).encode()).hexdigest()
        return cls(names, starts, [], {f.name: f for f in declared}, validation, f"{config.method}-{digest[:12]}")

    @property
    def sizes(self) -> dict[str, int]:
        """The declared families of finitely many configurations, and how many."""
        return {name: n for name, f in self.declared.items() if (n := f.size()) is not None}

    def suggest(self, trial, kind: str) -> ModelConfig:
        if kind in self.declared:
            return self.declared[kind].suggest(trial)
        return suggest(trial, kind, self.validation)


# ----------------------------------------------------------------------------------------------
# the search
# ----------------------------------------------------------------------------------------------


def _storage_url(settings: Settings) -> str:
    folder = settings.data_dir / "search"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'optuna.db'}"


def _config_of(trial) -> ModelConfig:
    return ModelConfig.model_validate(trial.user_attrs["config"])


def _mlflow_params(config: ModelConfig) -> dict[str, Any]:
    out = {"kind": config.kind, "weighting": config.weighting, "alpha": config.alpha}
    out.update({f"param.{k}": v for k, v in config.params.items()})
    if config.kind in ("lightfm", "ensemble"):
        out.update(
            {"features.items": config.features.item_categories, "features.users": config.features.user_attributes}
        )
    return out


class _FamilySchedule:
    """After the starting points, the next trial's family: round-robin over the ``top`` families
    by best score so far (TPE then picks the parameters within the family). Left to TPE, the
    family is a categorical it exploits greedily — one family gets every trial and a close
    second (whose tuned form may win, and which the ensemble needs) gets none. A family of
    ``sizes[name]`` configurations is left out once each was tried; the study stops when every
    family is."""

    def __init__(self, kinds: list[str], n_starts: int, sizes: Mapping[str, int] | None = None, top: int = 4) -> None:
        self.kinds, self.n_starts, self.sizes, self.top = kinds, n_starts, dict(sizes or {}), top

    def __call__(self, study, trial=None) -> None:
        import optuna

        if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            return
        finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
        best: dict[str, float] = {}
        for t in finished:
            value = (
                t.value
                if t.state == optuna.trial.TrialState.COMPLETE
                else max(t.intermediate_values.values(), default=None)
            )
            kind = t.params.get("kind")
            if kind in self.kinds and value is not None:
                best[kind] = max(best.get(kind, -math.inf), value)
        tried: dict[str, set[str]] = {}
        for t in finished:
            if "config" in t.user_attrs:
                tried.setdefault(t.params.get("kind"), set()).add(json.dumps(t.user_attrs["config"], sort_keys=True))
        open_kinds = [k for k in self.kinds if k not in self.sizes or len(tried.get(k, ())) < self.sizes[k]]
        if not open_kinds:
            logger.info("search: every configuration of the space was tried; stopping")
            study.stop()
            return
        ranked = sorted(open_kinds, key=lambda k: (-best.get(k, -math.inf), self.kinds.index(k)))[: self.top]
        n = max(0, len(finished) - self.n_starts)
        study.enqueue_trial({"kind": ranked[n % len(ranked)]})


class _Patience:
    """Stop the study once ``patience`` finished trials in a row did not beat the best."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def __call__(self, study, trial) -> None:
        import optuna

        done = [
            t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        ]
        complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            return
        best = max(complete, key=lambda t: t.value).number
        since = sum(1 for t in done if t.number > best)
        if since >= self.patience:
            logger.info("search: %d trials without improvement since trial %d; stopping early", since, best)
            study.stop()


class _Budget:
    """Stop the study once the next trial would end past ``max_seconds`` with what must follow
    it still to do: the wall-clock cap covers the whole search, the winner's final fit included,
    not only the trials (optuna's own timeout is checked only before a trial starts).

    Projected from the finished trials' measured times: the next trial as the longest one so
    far; after it, the final fit of an ensemble of the best trial of each of the top three
    families (the sum of their fits, scaled to all the data: the validation train part is
    smaller), the refit of the members fitted on another matrix than the leader's, the
    ensemble's weight grid and the content blend weights (one scoring per point)."""

    def __init__(self, max_seconds: float, started: float, content: bool) -> None:
        self.max_seconds, self.started, self.content = max_seconds, started, content

    def projected(self, study) -> float:
        import optuna

        finished = [t for t in study.trials if t.state.is_finished() and t.datetime_complete is not None]
        if not finished:
            return 0.0
        next_trial = max((t.datetime_complete - t.datetime_start).total_seconds() for t in finished)
        best: dict[str, Any] = {}
        for t in sorted(
            (t for t in finished if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: -(t.value or 0.0)
        ):
            best.setdefault(t.params.get("kind"), t)
        tops = list(best.values())[:3]
        fit = [t.user_attrs.get("fit_seconds", 0.0) for t in tops]
        final_fit = sum(fit) * FULL_OVER_VALIDATION
        lead = _config_of(tops[0]) if tops else None
        refits = sum(
            f
            for t, f in zip(tops[1:], fit[1:])
            if (_config_of(t).weighting, float(_config_of(t).alpha)) != (lead.weighting, float(lead.alpha))
        )
        score = max((t.user_attrs.get("score_seconds", 0.0) for t in tops), default=0.0)
        grid = len(_weight_grid(len(tops))) * score if len(tops) >= 2 else 0.0
        blend = len(CONTENT_WEIGHTS) * score if self.content else 0.0
        return next_trial + final_fit + refits + grid + blend

    def __call__(self, study, trial) -> None:
        elapsed = time.perf_counter() - self.started
        projected = self.projected(study)
        if elapsed + projected > self.max_seconds:
            logger.info(
                "search: %.0fs elapsed + %.0fs projected (next trial, final fit) > the %.0fs budget; stopping",
                elapsed,
                projected,
                self.max_seconds,
            )
            study.stop()


#: the final fit's time over the validation fit's: all events against the validation train
#: part (at least 70% of them, ``max_validation_ratio``), with a margin
FULL_OVER_VALIDATION = 1.5


@dataclass(frozen=True)
class TrialProgress:
    """Where a search stands after a finished trial (completed, pruned or failed)."""

    done: int  # trials finished in this study, resumed ones included
    total: int  # the trial budget
    label: str  # the last trial: ``als: ndcg@10 0.1774`` or ``bpr: pruned``
    best: float | None  # best validation score so far
    best_kind: str | None
    elapsed: float  # seconds since the search started
    max_seconds: float  # the wall-clock budget

    @property
    def eta_seconds(self) -> float:
        """Seconds left: the mean finished trial's time for each trial still to run, capped by
        the wall-clock budget (patience may stop the search sooner)."""
        left = max(self.max_seconds - self.elapsed, 0.0)
        if self.done <= 0:
            return left
        return min(left, self.elapsed / self.done * max(self.total - self.done, 0))


class _Progress:
    """The optuna callback that reports a :class:`TrialProgress` after every finished trial."""

    def __init__(self, report: Callable[[TrialProgress], None], config: SearchConfig, started: float, total: int):
        self.report, self.config, self.started, self.total = report, config, started, total

    def __call__(self, study, trial) -> None:
        import optuna

        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = max(complete, key=lambda t: t.value) if complete else None
        kind = trial.params.get("kind", "?")
        if trial.state == optuna.trial.TrialState.COMPLETE:
            label = f"{kind}: {self.config.metric}@{self.config.k} {trial.value:.4f}"
        else:
            label = f"{kind}: {trial.state.name.lower()}"
        self.report(
            TrialProgress(
                done=sum(1 for t in study.trials if t.state.is_finished()),
                total=self.total,
                label=label,
                best=best.value if best is not None else None,
                best_kind=best.params.get("kind") if best is not None else None,
                elapsed=time.perf_counter() - self.started,
                max_seconds=self.config.max_seconds,
            )
        )


def run_search(
    settings: Settings,
    dataset: Dataset,
    config: SearchConfig | None = None,
    *,
    space: list[Family] | None = None,
    holdout: Holdout | None = None,
    experiment: str | None = None,
    tags: Mapping[str, str] | None = None,
    on_trial: Callable[[TrialProgress], None] | None = None,
    trial_hook: Callable[[int], None] | None = None,
) -> SearchOutcome:
    """Search on ``dataset``'s time-validation split (or on ``holdout``, a split of it made by
    the caller); nothing is registered (see :func:`autotune`).

    ``space``: declared families (default: the built-in ones the data allows); ``experiment``:
    the MLflow experiment (default: the settings'), ``tags`` added to the parent run.
    ``on_trial(progress)`` reports each finished trial (:class:`TrialProgress`: n/N, best so
    far, ETA); ``trial_hook(number)`` is called at the
    start of every trial (tests use it to simulate a crash)."""
    import optuna

    config = config or SearchConfig()
    started = time.perf_counter()
    validation = Validation(dataset, config, holdout)
    notes: list[str] = []
    logger.info(
        "search: validation split %s",
        {k: v for k, v in validation.split.report.items() if isinstance(v, (int, float, str))},
    )
    popular = make_model("popular").fit(TrainData(validation.seen))
    pop_score = validation.score(popular)
    search_space = (
        SearchSpace.built_in(validation, config) if space is None else SearchSpace.of(space, validation, config)
    )
    kinds, starts = search_space.kinds, search_space.starts
    notes += search_space.notes
    for note in search_space.notes:
        logger.info("search: %s", note)
    metric_part = "" if config.metric == "ndcg" else f"-{config.metric}"
    study_name = f"autotune-{validation.fingerprint()}-seed{config.seed}-k{config.k}{metric_part}-{search_space.key}"
    # the tracking store is checked (a copied data folder refuses here) before any model loads
    exp_id = tracking.experiment_id(settings, experiment or settings.experiment_name)
    encoder = _content_encoder(validation, config, notes)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # with no starting points, a few random trials before TPE models anything or pruning starts
    warmup = len(starts) or min(config.trials, 5)
    sampler = (
        optuna.samplers.TPESampler(seed=config.seed, multivariate=True, group=True, n_startup_trials=warmup)
        if config.method == "tpe"
        # a grid's points are all enqueued: the sampler draws nothing then
        else optuna.samplers.RandomSampler(seed=config.seed)
    )
    study = optuna.create_study(
        study_name=study_name,
        storage=_storage_url(settings),
        direction="maximize",
        load_if_exists=True,
        sampler=sampler,
        # prune only the clearly bad (bottom quarter on half the users: optuna keeps the top
        # ``percentile``), never a starting point
        pruner=optuna.pruners.PercentilePruner(75.0, n_startup_trials=warmup, n_warmup_steps=0),
    )
    total = len(starts) if config.method == "grid" else config.trials
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    n_done = sum(1 for t in study.trials if t.state in finished_states)
    if not study.trials:
        for point in starts[:total]:
            study.enqueue_trial(point)
    schedule = _FamilySchedule(kinds, len(starts), search_space.sizes)
    if n_done:
        logger.info("search: resuming study %s: %d trials already done", study_name, n_done)
        notes.append(f"resumed: {n_done} trials were already done")
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    enough_users = len(validation.users) >= config.min_eval_users
    if not enough_users:
        notes.append(
            f"only {len(validation.users)} validation users (< {config.min_eval_users}): too little data to compare models"
        )
        logger.warning("search: %s; popularity wins", notes[-1])

    # the best fitted model of each family, by trial number: the ensemble and the content space
    # reuse them instead of refitting (a resumed search refits what an earlier process fitted)
    models: dict[str, tuple[float, int, Any]] = {}

    def objective(trial) -> float:
        if trial_hook is not None:
            trial_hook(trial.number)
        kind = trial.suggest_categorical("kind", kinds)
        model_config = search_space.suggest(trial, kind)
        dumped = model_config.model_dump(mode="json")
        trial.set_user_attr("config", dumped)
        scored = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if any(t.user_attrs.get("config") == dumped for t in scored):
            # drawn again (a finite family, or a sampler's repeat): its score is known already
            trial.set_user_attr("repeat", True)
            raise optuna.TrialPruned()
        with tracking.start_run(
            exp_id,
            f"trial-{trial.number:03d}-{kind}",
            nested=True,
            tags={SEARCH_TAG: "trial", "optuna.trial": str(trial.number)},
        ) as run:
            trial.set_user_attr("run_id", run.info.run_id)
            tracking.log_params_flat(_mlflow_params(model_config))
            t0 = time.perf_counter()
            model = validation.fit(model_config)
            fit_s = time.perf_counter() - t0
            half = validation.score(model, validation.first_half)
            trial.report(half, step=0)
            if trial.should_prune():
                tracking.log_metrics_finite({f"{config.key}_half": half, "time_fit_s": fit_s})
                tracking.set_tag("optuna.state", "pruned")
                raise optuna.TrialPruned()
            t_score = time.perf_counter()
            per_user = validation.per_user(model)
            trial.set_user_attr("fit_seconds", fit_s)
            trial.set_user_attr("score_seconds", time.perf_counter() - t_score)
            # a model whose fold-in is worse than its trained vectors serves returning users
            # with new events, and new users, worse than it validates: its score says so
            fold_in_ratio = validation.fold_in_ratio(model, model_config)
            per_user = per_user * min(1.0, fold_in_ratio)
            value = float(per_user.mean())
            trial.set_user_attr("per_user", np.round(per_user, 5).tolist())
            kept = models.get(kind)
            if kept is None or value > kept[0]:
                models[kind] = (value, trial.number, model)  # the ensemble and content reuse it
            tracking.log_metrics_finite(
                {
                    config.key: value,
                    f"{config.key}_fold_in_ratio": fold_in_ratio,
                    f"{config.key}_half": half,
                    "time_fit_s": fit_s,
                    "time_trial_s": time.perf_counter() - t0,
                }
            )
        return value

    # a resumed search continues its parent run, so every trial stays under one parent
    nested = tracking.has_active_run()  # inside a pipeline run: the search is its child
    parent_run = (
        tracking.start_run(
            exp_id, f"search-{study_name[:40]}", nested=nested, tags={SEARCH_TAG: "parent", **(tags or {})}
        )
        if parent_id is None
        else tracking.start_run(run_id=parent_id, nested=nested)
    )
    with parent_run as parent:
        if parent_id is None:
            study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
            tracking.log_params_flat(
                {
                    "trials": config.trials,
                    "max_seconds": config.max_seconds,
                    "patience": config.patience,
                    "validation_ratio": config.validation_ratio,
                    "seed": config.seed,
                    "families": ",".join(kinds),
                    "study": study_name,
                    "validation_users": len(validation.users),
                    "metric": config.key,
                    "method": config.method,
                    "holdout": validation.holdout.describe(),
                }
            )
            tracking.log_metrics_finite({f"popular_{config.key}": pop_score})
        remaining = total - n_done
        if enough_users and remaining > 0:
            budget_left = config.max_seconds - (time.perf_counter() - started)
            # a grid walks its enqueued points only; otherwise each next trial's family is scheduled
            rotate = [schedule] if config.method != "grid" else []
            if rotate and n_done >= len(starts):
                schedule(study)  # a resumed search: the next family, as if it had not stopped
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=max(budget_left, 1.0),
                catch=(ValueError, np.linalg.LinAlgError),
                callbacks=[
                    *rotate,
                    _Patience(config.patience),
                    _Budget(config.max_seconds, started, encoder is not None),
                ]
                + ([_Progress(on_trial, config, started, total)] if on_trial is not None else []),
                gc_after_trial=True,
            )
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        rows = [
            {
                "trial": t.number,
                "family": t.params.get("kind"),
                "kind": t.user_attrs["config"]["kind"] if "config" in t.user_attrs else t.params.get("kind"),
                "state": "repeat" if t.user_attrs.get("repeat") else t.state.name.lower(),
                "value": t.value,
                "config": t.user_attrs.get("config"),
                "run_id": t.user_attrs.get("run_id"),
                "seconds": (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None,
            }
            for t in study.trials
            if t.state.is_finished()
        ]
        table = pd.DataFrame(rows)
        candidates = [
            Candidate(
                ModelConfig(kind="popular", params={}, weighting="none", alpha=1.0, name="popular"),
                validation.per_user(popular),
                PREFERENCE_LAST,
                popular,
            )
        ]
        start_numbers = {t.number for t in study.trials if t.system_attrs.get("fixed_params", {}).keys() - {"kind"}}
        by_number = {number: model for _, number, model in models.values()}
        for t in complete:
            rank = _preference(_config_of(t).kind) if t.number in start_numbers else PREFERENCE_TUNED
            candidates.append(
                Candidate(_config_of(t), np.asarray(t.user_attrs["per_user"]), rank, by_number.get(t.number))
            )
        if complete and config.ensemble:
            ensemble = _best_ensemble(validation, complete, max(c.score for c in candidates), exp_id, config, by_number)
            if ensemble is not None:
                candidates.append(ensemble)
        chosen, best = choose(candidates, notes)
        best_config, best_score = chosen.config, chosen.score
        if best_config.kind == "popular" and complete:
            notes.append(f"popularity validates as well as the best trial ({best.score:.4f})")
        if best_config.kind in ("itemknn", "popular"):
            notes.append(f"fell back to {best_config.kind}: it validated best")
        winner_model = chosen.model if chosen.model is not None else validation.fit(best_config)
        content, hybrid = _content_space(validation, best_config, winner_model, encoder, config, notes)
        elapsed = time.perf_counter() - started
        winner_label = describe(best_config)
        tracking.log_metrics_finite(
            {
                f"best_{config.key}": best_score,
                "lift_over_popular": best_score / pop_score if pop_score > 0 else 0.0,
                "search_seconds": elapsed,
                "trials_done": len(complete),
            }
        )
        tracking.log_params_flat(
            {
                "winner": winner_label[:500],
                "content_kind": content.kind if content else "none",
                "content_weight": hybrid.weights[1] if content else 0.0,
            }
        )
        tracking.set_tag("recsys.search.notes", "; ".join(notes)[:4000])
        parent_run_id = parent.info.run_id
    logger.info(
        "search: winner %s, %s %.4f (popularity %.4f) in %.0fs",
        winner_label,
        config.key,
        best_score,
        pop_score,
        elapsed,
    )
    holdout_fit = None
    if winner_model.user_vectors_ is not None:
        trained = TrainedModel.of(winner_model, best_config.weighting, best_config.alpha)
        holdout_fit = HoldoutFit(validation.holdout, trained)
    return SearchOutcome(
        best_config,
        best_score,
        pop_score,
        content,
        hybrid,
        parent_run_id,
        study_name,
        table,
        elapsed,
        notes,
        holdout_fit,
    )


def describe(config: ModelConfig) -> str:
    """A short human label of a configuration (for logs and the model list)."""
    if config.kind == "ensemble":
        return "ensemble(" + " + ".join(f"{m['kind']}×{m.get('weight', 1.0):g}" for m in config.params["members"]) + ")"
    params = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.params.items() if k != "num_threads"
    )
    weighting = (
        f", {config.weighting}" + (f" α={config.alpha:.3g}" if config.weighting == "confidence" else "")
        if config.weighting != "none"
        else ""
    )
    return f"{config.kind}({params}{weighting})"


def _best_ensemble(
    validation: Validation,
    complete: list,
    best_single: float,
    exp_id: str,
    config: SearchConfig,
    fitted: dict[int, Any] | None = None,
) -> Candidate | None:
    """The best configuration of each of the top three families, blended with weights chosen on
    validation (a candidate like the others; :func:`choose` decides). A member whose trial's
    model is in ``fitted`` (by trial number) and was fitted on the same matrix is reused."""
    fitted = fitted or {}
    by_kind: dict[str, Any] = {}
    for t in sorted(complete, key=lambda t: -t.value):
        by_kind.setdefault(t.params["kind"], t)
    tops = list(by_kind.values())[:3]
    if len(tops) < 2:
        return None
    lead = _config_of(tops[0])
    members, configs = [], []
    for t in tops:
        # an ensemble is fitted on one matrix: the leader's weighting for every member
        own = _config_of(t)
        shared = own.model_copy(update={"weighting": lead.weighting, "alpha": lead.alpha})
        same_matrix = (own.weighting, float(own.alpha)) == (shared.weighting, float(shared.alpha))
        model = fitted[t.number] if same_matrix and t.number in fitted else validation.fit(shared)
        if model.user_vectors_ is None:
            continue
        members.append(model)
        configs.append(shared)
    if len(members) < 2:
        return None
    best: tuple[float, list[float], np.ndarray] | None = None
    for weights in _weight_grid(len(members)):
        used = [i for i, w in enumerate(weights) if w > 0]
        if len(used) < 2:
            continue
        blended = EnsembleEmbedder.from_fitted([members[i] for i in used], [weights[i] for i in used])
        per_user = validation.per_user(blended)
        if best is None or per_user.mean() > best[0]:
            best = (float(per_user.mean()), list(weights), per_user)
    if best is None:
        return None
    value, weights, per_user = best
    features = next((c.features for c in configs if c.kind == "lightfm"), FeatureConfig())
    ensemble = ModelConfig(
        kind="ensemble",
        weighting=lead.weighting,
        alpha=lead.alpha,
        features=features,
        params={
            "members": [
                {"kind": c.kind, "params": dict(c.params), "weight": float(w)}
                for c, w in zip(configs, weights)
                if w > 0
            ]
        },
    )
    with tracking.start_run(exp_id, "ensemble", nested=True, tags={SEARCH_TAG: "ensemble"}):
        tracking.log_params_flat({"members": describe(ensemble), "weighting": lead.weighting, "alpha": lead.alpha})
        tracking.log_metrics_finite({config.key: value, f"best_single_{config.key}": best_single})
    logger.info("search: ensemble %s %s %.4f vs best single %.4f", describe(ensemble), config.key, value, best_single)
    blended = EnsembleEmbedder.from_fitted(
        [members[i] for i, w in enumerate(weights) if w > 0], [w for w in weights if w > 0]
    )
    return Candidate(ensemble, per_user, PREFERENCE_ENSEMBLE, blended)


#: which of several configurations validating alike wins: the families' starting points in this
#: order (EASE and ALS are the most robust on item-rich data in the literature and in
#: bench/movielens100k_reference.py), then an ensemble, then tuned trials, popularity last
FAMILY_PREFERENCE = ("ease", "als", "lightfm", "bpr", "itemknn", "item2vec")
PREFERENCE_ENSEMBLE = len(FAMILY_PREFERENCE)
PREFERENCE_TUNED = PREFERENCE_ENSEMBLE + 1
PREFERENCE_LAST = PREFERENCE_TUNED + 1


def _preference(kind: str) -> int:
    return FAMILY_PREFERENCE.index(kind) if kind in FAMILY_PREFERENCE else PREFERENCE_ENSEMBLE - 1


@dataclass
class Candidate:
    config: ModelConfig
    per_user: np.ndarray
    preference: int
    #: the configuration fitted on the validation split, when the search has it
    model: Any = None

    @property
    def score(self) -> float:
        return float(self.per_user.mean())


def choose(candidates: list[Candidate], notes: list[str] | None = None) -> tuple[Candidate, Candidate]:
    """The one-standard-error rule (Breiman et al.): among the candidates whose validation nDCG
    is within one standard error of the best's (the error of the paired per-user difference),
    the most preferred. A validation slice a few hundred users wide cannot tell apart configs
    closer than that, and picking the noisiest winner overfits the slice. When popularity itself
    validates best, it is chosen: a learned model within its error has not shown it learned
    anything. Returns (chosen, best)."""
    best = max(candidates, key=lambda c: c.score)
    if best.preference == PREFERENCE_LAST:
        return best, best
    eligible = []
    for c in candidates:
        diff = best.per_user - c.per_user
        se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else 0.0
        if best.score - c.score <= se:
            eligible.append(c)
    chosen = min(eligible, key=lambda c: (c.preference, -c.score))
    if notes is not None and chosen is not best:
        notes.append(
            f"one-standard-error rule: {describe(chosen.config)} ({chosen.score:.4f}) over the best-scoring "
            f"{describe(best.config)} ({best.score:.4f})"
        )
    return chosen, best


def _weight_grid(n: int) -> list[tuple[float, ...]]:
    import itertools

    return [(1.0, *rest) for rest in itertools.product(ENSEMBLE_WEIGHTS, repeat=n - 1)]


def _content_kind(config: SearchConfig) -> str:
    if config.content != "auto":
        return config.content
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        return "tfidf"
    return "sbert"


def _content_encoder(validation: Validation, config: SearchConfig, notes: list[str]):
    """The content encoder fitted on the catalog when items have text (None otherwise). Fitted
    before the trials: it does not depend on the winner, and its time is then on the clock the
    trial budget reads."""
    kind = _content_kind(config)
    if kind == "none" or not has_text(validation.dataset.items):
        if kind != "none":
            notes.append("no content space: items have no titles, descriptions or categories")
        return None
    return make_model(kind).fit(TrainData.catalog_only(validation.dataset.items, validation.item_ids))


def _content_space(
    validation: Validation, winner: ModelConfig, model, encoder, config: SearchConfig, notes: list[str]
) -> tuple[ContentConfig | None, HybridConfig]:
    """The hybrid blend weight of ``encoder`` (from :func:`_content_encoder`) chosen on
    validation (``model``: the winner fitted on the validation split)."""
    if encoder is None:
        return None, HybridConfig(default_mode="collaborative", weights=(1.0, 0.0))
    kind = encoder.kind
    content = ContentConfig(kind=kind)
    C = encoder.item_vectors_
    if winner.kind == "popular" or len(validation.users) == 0:
        return content, HybridConfig(default_mode="collaborative", weights=(1.0, 0.0))
    users = validation.users
    seen = validation.seen[users]
    profiles = history_profiles(seen, C)
    scores = {}
    for w in CONTENT_WEIGHTS:
        top = hybrid_top_k(
            model.user_vectors_[users],
            model.item_vectors_,
            profiles,
            C,
            config.k,
            exclude=seen,
            metric=model.metric,
            weights=(1.0 - w, w),
            fusion="weighted",
        )
        scores[w] = float(ranking_metrics_at_k(top, validation.test, config.k, user_rows=users)[config.metric])
    best_w = max(scores, key=lambda w: (scores[w], -w))
    notes.append(
        f"content {kind}: blend weight {best_w:g} ({config.metric} "
        + ", ".join(f"{w:g}→{v:.4f}" for w, v in scores.items())
        + ")"
    )
    logger.info("search: %s", notes[-1])
    mode = "hybrid" if best_w > 0 else "collaborative"
    return content, HybridConfig(default_mode=mode, weights=(1.0 - best_w, best_w) if best_w > 0 else (0.7, 0.3))


# ----------------------------------------------------------------------------------------------
# search + train
# ----------------------------------------------------------------------------------------------


@dataclass
class AutotuneResult:
    search: SearchOutcome
    train: TrainResult


def autotune(
    settings: Settings,
    config: SearchConfig | None = None,
    *,
    dataset: Dataset | None = None,
    as_of=None,
    promote_alias: str | None = "production",
    content: str | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_trial: Callable[[TrialProgress], None] | None = None,
) -> AutotuneResult:
    """Search on the snapshot, then refit the winner on all of it, register and promote it
    through ``pipelines.train.train``; the version is tagged with the winner and its lift.
    ``on_stage`` names each stage (search, then training's); ``on_trial`` reports every
    finished search trial (see :func:`run_search`)."""
    from feature_store import FeatureStore

    config = config or SearchConfig()
    if content is not None:
        config.content = content
    if dataset is None:
        dataset = FeatureStore(settings.database_url).snapshot(as_of)
    if len(dataset.events) == 0:
        raise DatasetError("the snapshot holds no events: ingest data first (recsys ingest / recsys generate)")
    if on_stage:
        on_stage("search")
    outcome = run_search(
        settings,
        dataset,
        config,
        on_trial=on_trial,
    )
    train_config = TrainConfig(
        model=outcome.winner,
        content=outcome.content,
        hybrid=outcome.hybrid,
        seed=config.seed,
        promote_alias=promote_alias,
    )
    result = train(
        settings, train_config, dataset=dataset, as_of=as_of, on_stage=on_stage, holdout_fit=outcome.holdout_fit
    )
    client = tracking.client_for(settings)
    lift = f"x{outcome.lift:.2f}" if math.isfinite(outcome.lift) else "n/a (popularity scores 0)"
    tags = {
        "autotune.winner": describe(outcome.winner)[:250],
        "autotune.validation": f"ndcg@{config.k} {outcome.score:.4f} vs popularity {outcome.popularity_score:.4f} ({lift})",
        "autotune.search_run": outcome.parent_run_id,
    }
    if result.version is not None:
        for key, value in tags.items():
            client.set_model_version_tag(settings.registered_model_name, result.version, key, value)
    for key, value in tags.items():
        client.set_tag(result.run_id, key, value)
    return AutotuneResult(outcome, result)
