"""The bias report of one model on a holdout, and each configured mitigation measured on the
same holdout: popularity calibration (recsys.ranking.calibrate, what the API serves with
``?calibration=``) and linear debiasing of the user vectors (recsys.models.debias)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from recsys.evaluation.bias import BiasReport, MitigationResult, attribute_leakage, bias_report
from recsys.evaluation.topk import top_k_scores
from recsys.models.debias import LinearDebiaser, refit_als_items
from recsys.ranking import CALIBRATION_POOL_FACTOR, CALIBRATION_POOL_MIN, calibrate_batch, popularity_bins

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DebiasSettings:
    attributes: Sequence[str]
    target_auc: float = 0.55
    max_directions: int = 20
    #: ALS: re-solve the item vectors against the debiased user vectors
    refit_items: bool = True


@dataclass(frozen=True)
class BiasSettings:
    seed: int = 0
    n_boot: int = 1000
    min_group_users: int = 10
    #: leakage is measured on at most this many users (sampled with the seed; the AUC's
    #: standard error is then about 0.01)
    max_leakage_users: int = 5_000
    #: calibration strength to measure (0: none)
    calibration: float = 0.0
    debias: DebiasSettings | None = None


@dataclass
class Assessment:
    report: BiasReport
    mitigations: list[MitigationResult] = field(default_factory=list)
    #: the full report of each mitigated ranking, by mitigation name
    after: dict[str, BiasReport] = field(default_factory=dict)


def leakage_sample(n: int, limit: int, seed: int) -> np.ndarray:
    rows = np.arange(n)
    if n > limit:
        rows = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    return rows


def served_leakage(user_vectors: np.ndarray, labels: Mapping[str, np.ndarray], settings: BiasSettings):
    """Leakage of ``user_vectors`` probed on a seeded sample of at most ``max_leakage_users``
    (each result records the population it was drawn from)."""
    rows = leakage_sample(len(user_vectors), settings.max_leakage_users, settings.seed)
    logger.info("leakage: probing %d of %d users (seeded sample)", len(rows), len(user_vectors))
    leakage = attribute_leakage(
        np.asarray(user_vectors)[rows],
        {a: np.asarray(v, dtype=object)[rows] for a, v in labels.items()},
        seed=settings.seed,
    )
    return [replace(x, population=len(user_vectors)) for x in leakage]


def fit_debiaser(
    user_vectors: np.ndarray, labels: Mapping[str, np.ndarray], debias: DebiasSettings, seed: int
) -> LinearDebiaser:
    missing = [a for a in debias.attributes if a not in labels]
    if missing:
        raise ValueError(
            f"debias: the users carry no attribute {', '.join(missing)} (known: {', '.join(labels) or 'none'})"
        )
    return LinearDebiaser(target_auc=debias.target_auc, max_directions=debias.max_directions, seed=seed).fit(
        user_vectors, {a: labels[a] for a in debias.attributes}
    )


def assess(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    metric: str,
    train: sp.csr_matrix,
    test: sp.csr_matrix,
    users: np.ndarray,
    k: int,
    labels: Mapping[str, np.ndarray],
    settings: BiasSettings,
    *,
    model_kind: str = "",
    regularization: float | None = None,
    leakage: bool = True,
) -> Assessment:
    """Report + mitigations for a model fitted on ``train`` (its training matrix: confidence
    values for ALS) and scored on ``test`` for ``users`` (matrix rows). ``labels``: attribute
    labels per matrix row (:func:`recsys.evaluation.bias.user_attribute_labels`). ``leakage``:
    measure the leakage of ``user_vectors`` (off when the caller measures the served vectors)."""
    train = sp.csr_matrix(train)
    users = np.asarray(users, dtype=np.int64)
    seen = train[users]
    pool = max(CALIBRATION_POOL_FACTOR * k, k + CALIBRATION_POOL_MIN) if settings.calibration > 0 else k
    pool = min(pool, item_vectors.shape[0])
    candidates, scores = top_k_scores(user_vectors, item_vectors, pool, exclude=seen, user_rows=users, metric=metric)
    recommended = candidates[:, :k]
    kw = dict(
        user_rows=users, attributes=labels, seed=settings.seed, n_boot=settings.n_boot,
        min_group_users=settings.min_group_users,
    )  # fmt: skip
    base = bias_report(recommended, test, train, k, **kw)
    if leakage:
        base = _with_leakage(base, served_leakage(user_vectors, labels, settings))
    out = Assessment(base)
    if settings.calibration > 0:
        popularity = np.diff(sp.csc_matrix(train).indptr).astype(np.float64)
        histories = [seen.indices[seen.indptr[i] : seen.indptr[i + 1]] for i in range(len(users))]
        calibrated = calibrate_batch(
            candidates, scores, histories, popularity_bins(popularity), settings.calibration, k
        )
        after = _with_leakage(bias_report(calibrated, test, train, k, **kw), base.leakage)
        out.after["calibration"] = after
        out.mitigations.append(MitigationResult.compare("calibration", {"strength": settings.calibration}, base, after))
        logger.info(
            "calibration %.2f: nDCG %.4f -> %.4f, amplification %.4f -> %.4f",
            settings.calibration,
            base.ndcg,
            after.ndcg,
            base.amplification,
            after.amplification,
        )
    if settings.debias is not None:
        debiaser = fit_debiaser(user_vectors, labels, settings.debias, settings.seed)
        debiased = debiaser.transform(np.asarray(user_vectors, np.float32))
        items = item_vectors
        refit = settings.debias.refit_items and model_kind == "als" and regularization is not None
        if refit:
            items = refit_als_items(debiased, train, regularization)
        rec = top_k_scores(debiased, items, k, exclude=seen, user_rows=users, metric=metric)[0]
        after = bias_report(rec, test, train, k, **kw)
        after = _with_leakage(after, served_leakage(debiased, labels, settings))
        out.after["debias"] = after
        before = base
        if not base.leakage:  # measured here, on the same vectors, for the before/after pair
            before = _with_leakage(base, served_leakage(user_vectors, labels, settings))
        out.mitigations.append(
            MitigationResult.compare(
                "debias",
                {
                    "attributes": list(settings.debias.attributes),
                    "directions": debiaser.n_directions,
                    "target_auc": settings.debias.target_auc,
                    "refit_items": bool(refit),
                },
                before,
                after,
            )
        )
        logger.info(
            "debias %s: %d directions, nDCG %.4f -> %.4f, leakage %s",
            ",".join(settings.debias.attributes),
            debiaser.n_directions,
            base.ndcg,
            after.ndcg,
            {a: round(after.leakage_of(a).auc, 3) for a in settings.debias.attributes if after.leakage_of(a)},
        )
    return out


def _with_leakage(report: BiasReport, leakage) -> BiasReport:
    return replace(report, leakage=list(leakage))
