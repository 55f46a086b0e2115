"""Model cards: one per registered version, built at training time and kept as MLflow
artifacts of the version's run, under ``model_card/``:

* ``model_card.json`` — the :class:`ModelCard` (``ModelCard.from_dict`` reads it back),
* ``model_card.md`` — the same for people,
* PNG plots (matplotlib Agg): ``exposure_by_decile.png``, ``group_accuracy.png``,
  ``leakage.png`` and, when a mitigation is configured, ``mitigations.png``.

That file layout is a contract: the dashboard reads these files from the run's artifacts.
A card holds the data (window, users, items, events, as_of), the model and its config, the
validation metrics, the bias report (recsys.evaluation.bias) and each configured mitigation
with its accuracy cost (recsys.evaluation.mitigation). ``load_model_card(settings, version)``
returns it typed; ``recsys model card VERSION`` prints it.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from recsys.evaluation.bias import BiasReport, MitigationResult
from recsys.evaluation.mitigation import Assessment, BiasSettings, DebiasSettings
from recsys.settings import Settings

logger = logging.getLogger(__name__)

CARD_ARTIFACT = "model_card"
CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
PLOT_FILES = ("exposure_by_decile.png", "group_accuracy.png", "leakage.png", "mitigations.png")
CARD_FORMAT = 1


# ---------------------------------------------------------------------------------------------
# configuration (training config `bias:`, pipeline config `bias:`)
# ---------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DebiasConfig(_Strict):
    """Linear debiasing of the user vectors at bundle build (recsys.models.debias)."""

    #: user attributes to project out, by the report's names (MovieLens: gender, age_band, occupation)
    attributes: list[str] = Field(default_factory=lambda: ["gender"], min_length=1)
    #: remove directions until every attribute's cross-validated leakage AUC is at most this
    target_auc: float = Field(0.55, gt=0.5, le=1)
    max_directions: int = Field(20, ge=1)
    #: ALS: re-solve the item vectors against the debiased user vectors
    refit_items: bool = True


class BiasConfig(_Strict):
    """The bias report of the model card, and the mitigations (each optional)."""

    #: compute the bias report and the model card at all
    enabled: bool = True
    #: bootstrap resamples of the group intervals
    bootstrap: int = Field(1000, ge=10, le=100_000)
    #: smaller groups are reported but left out of the worst/best gap
    min_group_users: int = Field(10, ge=1)
    #: leakage is measured on at most this many users
    max_leakage_users: int = Field(5_000, ge=10)
    #: popularity calibration strength served by default (0 = off; per request ``?calibration=``);
    #: when > 0 the card measures it on the holdout
    calibration: float = Field(0.0, ge=0, le=1)
    debias: DebiasConfig | None = None

    def settings(self, seed: int) -> BiasSettings:
        d = self.debias
        return BiasSettings(
            seed=seed,
            n_boot=self.bootstrap,
            min_group_users=self.min_group_users,
            max_leakage_users=self.max_leakage_users,
            calibration=self.calibration,
            debias=None
            if d is None
            else DebiasSettings(
                attributes=tuple(d.attributes),
                target_auc=d.target_auc,
                max_directions=d.max_directions,
                refit_items=d.refit_items,
            ),
        )


# ---------------------------------------------------------------------------------------------
# the card
# ---------------------------------------------------------------------------------------------


@dataclass
class DataSummary:
    n_users: int
    n_items: int
    n_events: int
    window_start: str | None
    window_end: str | None
    as_of: str | None

    @classmethod
    def from_stats(cls, stats: dict[str, Any]) -> DataSummary:
        return cls(
            n_users=int(stats.get("n_users", 0)),
            n_items=int(stats.get("n_items", 0)),
            n_events=int(stats.get("n_events", 0)),
            window_start=_str(stats.get("min_timestamp")),
            window_end=_str(stats.get("max_timestamp")),
            as_of=_str(stats.get("as_of")),
        )


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


@dataclass
class ModelCard:
    model_name: str
    version: str | None
    run_id: str
    created: str
    #: kind, params, weighting, alpha (the ModelConfig) and what else the trainer records
    model: dict[str, Any]
    data: DataSummary
    #: holdout metrics as the run logged them (``ndcg_at_10``, …)
    validation: dict[str, float]
    validation_split: str
    bias: BiasReport | None
    mitigations: list[MitigationResult] = field(default_factory=list)
    #: what serving applies: default calibration strength, debiasing projection
    serving: dict[str, Any] = field(default_factory=dict)
    format: int = CARD_FORMAT

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mitigations"] = [
            {**asdict(m), "ndcg_change": m.ndcg_change, "amplification_change": m.amplification_change}
            for m in self.mitigations
        ]
        if self.bias is not None:
            d["bias"]["summary"] = self.bias.summary()
        return _finite(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        bias = d.get("bias")
        fields = set(MitigationResult.__dataclass_fields__)
        return cls(
            model_name=d["model_name"],
            version=d.get("version"),
            run_id=d["run_id"],
            created=d["created"],
            model=dict(d.get("model", {})),
            data=DataSummary(**d["data"]),
            validation={k: _float(v) for k, v in d.get("validation", {}).items()},
            validation_split=d.get("validation_split", ""),
            bias=None if bias is None else BiasReport.from_dict(_unfinite(bias)),
            mitigations=[
                MitigationResult(**{k: v for k, v in _unfinite(m).items() if k in fields})
                for m in d.get("mitigations", [])
            ],
            serving=dict(d.get("serving", {})),
            format=int(d.get("format", CARD_FORMAT)),
        )

    def to_markdown(self) -> str:
        return render_markdown(self)


def _finite(x: Any) -> Any:
    """NaN/inf → None, so the JSON is strict (readers in other languages choke on NaN)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _unfinite(x: Any) -> Any:
    """None → NaN where a number belongs (the reverse of :func:`_finite` for dataclass fields)."""
    if isinstance(x, dict):
        return {k: (float("nan") if v is None and k not in _NULLABLE else _unfinite(v)) for k, v in x.items()}
    if isinstance(x, list):
        return [_unfinite(v) for v in x]
    return x


_NULLABLE = {"worst", "best", "version", "window_start", "window_end", "as_of"}


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _fmt(v: float | None, digits: int = 4) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def render_markdown(card: ModelCard) -> str:
    lines = [f"# Model card: {card.model_name} version {card.version or '(unregistered)'}", ""]
    lines += [f"Run `{card.run_id}`, created {card.created}.", ""]
    lines += ["## Model", ""]
    lines += [f"- kind: `{card.model.get('kind')}`"]
    for key in ("weighting", "alpha"):
        if key in card.model:
            lines.append(f"- {key}: `{card.model[key]}`")
    lines += [f"- params: `{json.dumps(card.model.get('params', {}), default=str)}`", ""]
    d = card.data
    lines += ["## Data", ""]
    lines += [
        f"- events: {d.n_events:,}, users: {d.n_users:,}, items: {d.n_items:,}",
        f"- window: {d.window_start} … {d.window_end}",
        f"- as of: {d.as_of}",
        "",
    ]
    lines += ["## Validation", "", f"Split: {card.validation_split}", ""]
    lines += ["| metric | value |", "|---|---|"]
    for k, v in sorted(card.validation.items()):
        if not k.startswith(("split_", "time_", "index_")):
            lines.append(f"| {k} | {_fmt(v)} |")
    lines.append("")
    b = card.bias
    if b is None:
        lines += ["## Bias", "", "Not computed (`bias: {enabled: false}`).", ""]
        return "\n".join(lines)
    it = b.item
    lines += ["## Bias: items", ""]
    lines += [
        f"- exposure Gini {_fmt(it.exposure_gini)} vs data Gini {_fmt(it.data_gini)}: "
        f"**amplification {_fmt(it.amplification)}**",
        f"- catalogue coverage {_fmt(it.coverage)}, long-tail share {_fmt(it.long_tail_share)} "
        "(slots outside the 20% most popular items)",
        "",
        "| popularity decile | " + " | ".join(str(i + 1) for i in range(10)) + " |",
        "|---|" + "---|" * 10,
        "| share of recommendations | " + " | ".join(f"{x:.3f}" for x in it.exposure_by_decile) + " |",
        "| share of interactions | " + " | ".join(f"{x:.3f}" for x in it.data_by_decile) + " |",
        "",
        "![exposure by decile](exposure_by_decile.png)",
        "",
    ]
    lines += [f"## Bias: users (nDCG@{b.k} per group, bootstrap 95% intervals)", ""]
    lines += [f"Over the {b.n_users:,} holdout users evaluated (at most `eval_users`, a seeded sample).", ""]
    lines += ["| attribute | worst | best | gap [95% CI] |", "|---|---|---|---|"]
    for g in b.groups:
        lines.append(
            f"| {g.attribute} | {g.worst or '–'} | {g.best or '–'} | "
            f"{_fmt(g.gap)} [{_fmt(g.gap_ci_low, 3)}, {_fmt(g.gap_ci_high, 3)}] |"
        )
    lines += ["", "| attribute | group | users | nDCG | 95% CI |", "|---|---|---|---|---|"]
    for g in b.groups:
        for a in g.groups:
            note = "" if a.in_gap else " (too few users for the gap)"
            lines.append(
                f"| {g.attribute} | {a.group}{note} | {a.n_users} | {_fmt(a.ndcg)} | "
                f"[{_fmt(a.ci_low, 3)}, {_fmt(a.ci_high, 3)}] |"
            )
    lines += ["", "![group accuracy](group_accuracy.png)", ""]
    lines += ["## Bias: embeddings (attribute leakage of the served user vectors)", ""]
    if b.leakage:
        lines += ["| attribute | AUC (mean one-vs-rest) | worst class AUC | users probed |", "|---|---|---|---|"]
        for x in b.leakage:
            probed = f"{x.n_users:,} of {x.population:,} (seeded sample)" if x.population else f"{x.n_users:,}"
            lines.append(f"| {x.attribute} | {_fmt(x.auc, 3)} | {_fmt(x.max_auc, 3)} | {probed} |")
        lines += ["", "0.5: the vectors say nothing about the attribute.", "", "![leakage](leakage.png)", ""]
    else:
        lines += ["The users carry no attributes to measure.", ""]
    lines += ["## Mitigations", ""]
    if not card.mitigations:
        lines += ["None configured (`bias.calibration`, `bias.debias`).", ""]
    for m in card.mitigations:
        lines += [f"### {m.name} `{json.dumps(m.setting, default=str)}`", ""]
        lines += ["| | without | with | change |", "|---|---|---|---|"]
        lines.append(f"| nDCG@{b.k} | {_fmt(m.ndcg_before)} | {_fmt(m.ndcg_after)} | {m.ndcg_change:+.1%} |")
        lines.append(
            f"| amplification | {_fmt(m.amplification_before)} | {_fmt(m.amplification_after)} | "
            f"{m.amplification_change:+.1%} |"
        )
        lines.append(f"| coverage | {_fmt(m.coverage_before)} | {_fmt(m.coverage_after)} | |")
        lines.append(f"| max group gap | {_fmt(m.max_group_gap_before)} | {_fmt(m.max_group_gap_after)} | |")
        for a, v in m.leakage_after.items():
            if m.name == "debias":
                lines.append(f"| leakage AUC {a} | {_fmt(m.leakage_before.get(a), 3)} | {_fmt(v, 3)} | |")
        lines.append("")
    if card.serving:
        lines += ["## Serving", "", f"`{json.dumps(card.serving, default=str)}`", ""]
    return "\n".join(lines)


def plot_card(card: ModelCard, folder: Path) -> list[Path]:
    """The card's PNG plots into ``folder`` (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[Path] = []
    b = card.bias
    if b is None:
        return out
    x = list(range(1, 11))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar([i - 0.2 for i in x], b.item.data_by_decile, width=0.4, label="interactions")
    ax.bar([i + 0.2 for i in x], b.item.exposure_by_decile, width=0.4, label="recommendations")
    ax.set_xlabel("item popularity decile (10 = most popular)")
    ax.set_ylabel("share")
    ax.set_xticks(x)
    ax.set_title(f"exposure by popularity decile — amplification {b.item.amplification:.3f}")
    ax.legend()
    out.append(_save(fig, folder / "exposure_by_decile.png"))

    groups = b.groups
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 4), squeeze=False)
    for ax, g in zip(axes[0], groups):
        names = [a.group for a in g.groups]
        means = [a.ndcg for a in g.groups]
        err = [[max(0.0, a.ndcg - a.ci_low) for a in g.groups], [max(0.0, a.ci_high - a.ndcg) for a in g.groups]]
        colors = ["tab:red" if n == g.worst else "tab:green" if n == g.best else "tab:blue" for n in names]
        ax.barh(names, means, xerr=err, color=colors)
        ax.set_title(f"{g.attribute}: gap {_fmt(g.gap, 3)}")
        ax.set_xlabel(f"nDCG@{b.k}")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    out.append(_save(fig, folder / "group_accuracy.png"))

    if b.leakage:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.barh([x.attribute for x in b.leakage], [x.auc for x in b.leakage])
        ax.axvline(0.5, color="gray", linestyle="--")
        ax.set_xlim(0.4, 1.0)
        ax.set_xlabel("cross-validated AUC recovering the attribute from user vectors")
        ax.set_title("attribute leakage")
        fig.tight_layout()
        out.append(_save(fig, folder / "leakage.png"))

    if card.mitigations:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter([0], [b.amplification], label="model", color="black")
        for m in card.mitigations:
            ax.scatter([m.ndcg_change * 100], [m.amplification_after], label=f"{m.name} {m.setting}")
        ax.set_xlabel(f"nDCG@{b.k} change (%)")
        ax.set_ylabel("exposure amplification")
        ax.legend(fontsize=7)
        ax.set_title("mitigations: accuracy cost vs amplification")
        fig.tight_layout()
        out.append(_save(fig, folder / "mitigations.png"))
    return out


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_card(card: ModelCard, folder: Path) -> Path:
    """``model_card.json``, ``model_card.md`` and the plots into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CARD_JSON).write_text(card.to_json())
    (folder / CARD_MD).write_text(card.to_markdown())
    plot_card(card, folder)
    return folder


def new_card(
    *,
    model_name: str,
    version: str | None,
    run_id: str,
    model: dict[str, Any],
    data_stats: dict[str, Any],
    validation: dict[str, float],
    validation_split: str,
    bias: BiasReport | None,
    mitigations: list[MitigationResult],
    serving: dict[str, Any],
) -> ModelCard:
    return ModelCard(
        model_name=model_name,
        version=version,
        run_id=run_id,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        model=model,
        data=DataSummary.from_stats(data_stats),
        validation={k: float(v) for k, v in validation.items() if isinstance(v, (int, float))},
        validation_split=validation_split,
        bias=bias,
        mitigations=list(mitigations),
        serving=serving,
    )


def log_card(client, run_id: str, card: ModelCard) -> None:
    """Upload the card's files to ``run_id``'s artifacts under ``model_card/`` (the run may be
    finished: the version is known only after registration)."""
    with tempfile.TemporaryDirectory(prefix="card-") as tmp:
        folder = write_card(card, Path(tmp) / CARD_ARTIFACT)
        client.log_artifacts(run_id, str(folder), CARD_ARTIFACT)
    logger.info("model card of %s version %s logged to run %s", card.model_name, card.version, run_id)


class CardNotFound(ValueError):
    """The version does not exist or its run has no model card."""


def load_model_card(settings: Settings, version: str | int) -> ModelCard:
    """The card of registered ``version`` of ``settings.registered_model_name``."""
    from pipelines import tracking

    client = tracking.setup(settings)
    mv = tracking.get_version(client, settings.registered_model_name, version)
    if mv is None:
        raise CardNotFound(f"{settings.registered_model_name} has no version {version}")
    with tempfile.TemporaryDirectory(prefix="card-") as tmp:
        path = tracking.download_run_artifact(client, mv.run_id, f"{CARD_ARTIFACT}/{CARD_JSON}", Path(tmp))
        if path is None or not path.is_file():
            raise CardNotFound(
                f"{settings.registered_model_name} version {version} has no model card "
                f"(trained before cards existed, or with bias.enabled: false)"
            )
        card = ModelCard.from_dict(json.loads(path.read_text()))
    return card


def assessment_dict(assessment: Assessment) -> dict[str, Any]:
    """An assessment as JSON-able data (the pipeline keeps it between stages)."""
    return {
        "report": assessment.report.to_dict(),
        "mitigations": [asdict(m) for m in assessment.mitigations],
        "after": {name: r.to_dict() for name, r in assessment.after.items()},
    }


def assessment_from_dict(d: dict[str, Any]) -> Assessment:
    return Assessment(
        BiasReport.from_dict(d["report"]),
        [MitigationResult(**m) for m in d.get("mitigations", [])],
        {name: BiasReport.from_dict(r) for name, r in d.get("after", {}).items()},
    )
