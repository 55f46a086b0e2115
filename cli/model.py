"""`recsys model …`: the registry's versions, and rolling an alias back to the previous good one."""

from __future__ import annotations

import sys
from datetime import datetime
from enum import StrEnum
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.common import UsageError, cli_errors

app = typer.Typer(
    help="Registered model versions: list, card, rollback, off-policy evaluation.",
    no_args_is_help=True,
    add_completion=False,
)
#: width of the default version table: it is laid out to fit a terminal of 80 columns
NARROW = 80
#: width of ``--wide`` into a log or a pipe (cron, CI), where no terminal gives one
WIDE = 240
STATUS_STYLE = {"promoted": "green", "rejected": "red", "rolled back": "yellow", "registered": ""}


def _console(wide: bool) -> Console:
    """Text, never markup (cli/common.py); a terminal's own width, or NARROW / WIDE in a pipe."""
    return Console(width=None if sys.stdout.isatty() else (WIDE if wide else NARROW), markup=False)


def _num(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "-"


@app.command("list")
@cli_errors
def list_versions(
    limit: Annotated[int, typer.Option(min=1, help="newest N versions")] = 20,
    wide: Annotated[
        bool, typer.Option("--wide", help="every column: gate reason, bias, indexes, tags (needs ~200 columns)")
    ] = False,
) -> None:
    """Versions newest first: alias, status (what the dashboard shows), kind, nDCG@10,
    recall@10 and catalogue coverage; --wide adds the gate reason, bias, indexes and tags."""
    from cli.common import get_settings
    from pipelines import tracking
    from pipelines.versions import version_view

    settings = get_settings(database=False)
    client = tracking.client_for(settings)  # read-only: no experiment created, no migration run
    views = [version_view(row, settings) for row in tracking.list_versions(client, settings.registered_model_name)]
    table = Table(
        title=f"{settings.registered_model_name} versions",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
        pad_edge=False,
    )
    columns = ["version", "alias", "status", "kind", "nDCG@10", "coverage", "created"]
    if wide:
        columns[3:3] = ["gate reason"]
        columns[-2:-2] = ["recall@10"]
        columns += ["amplif.", "group gap", "index (recall@10, p50)", "tags"]
    numeric = {"version", "nDCG@10", "recall@10", "coverage", "amplif.", "group gap"}
    for col in columns:
        table.add_column(
            col,
            justify="right" if col in numeric else "left",
            no_wrap=not wide,
            # an alias list or an ensemble's kind may be long: cut at 80 columns, whole with --wide
            max_width=12 if col in ("alias", "kind") and not wide else None,
            overflow="fold" if wide else "ellipsis",
        )
    for v in views[:limit]:
        cells = {
            "version": v.version,
            "alias": ",".join(v.aliases),
            "status": Text(v.status, style=STATUS_STYLE.get(v.status, "")),
            "gate reason": v.status_reason or "",
            "kind": v.kind,
            "nDCG@10": _num(v.metrics.get("ndcg_at_10")),
            "recall@10": _num(v.metrics.get("recall_at_10")),
            "coverage": _num(v.metrics.get("coverage")),
            "created": v.created if wide else v.created[:10],
            "amplif.": _num(v.all_metrics.get("bias_amplification")),
            "group gap": _num(v.all_metrics.get("bias_max_group_gap")),
            "index (recall@10, p50)": index_summary(v.tags, v.all_metrics),
            "tags": ", ".join(
                f"{k}={val}"
                for k, val in v.tags.items()
                if k not in ("rejected", "gate", "promoted", "rolled_back", "manifest_sha256")
                and not k.startswith("index.")
            ),
        }
        table.add_row(*(cells[c] for c in columns))
    _console(wide).print(table)


def index_summary(tags: dict[str, str], metrics: dict[str, float]) -> str:
    """``user hnsw 0.962 0.05ms; item exact 1.000 19.7ms``: the index each space serves with
    (chosen at training) and what it measured there."""
    parts = []
    for key, kind in sorted(tags.items()):
        if not key.startswith("index."):
            continue
        role = key.removeprefix("index.")
        recall, ms = metrics.get(f"index_{role}_recall_at_10"), metrics.get(f"index_{role}_query_ms")
        parts.append(
            " ".join(
                [role, kind]
                + ([f"{recall:.3f}"] if recall is not None else [])
                + ([f"{ms:.2f}ms"] if ms is not None else [])
            )
        )
    return "; ".join(parts) or "-"


@app.command()
@cli_errors
def rollback(
    alias: Annotated[str | None, typer.Option(help="alias to move (default: RECSYS_MODEL_ALIAS)")] = None,
) -> None:
    """Move the alias to the previous good version (promoted before, never rejected)."""
    from cli.common import get_settings
    from pipelines import tracking

    settings = get_settings()
    client = tracking.setup(settings)
    alias = alias or settings.model_alias
    old, new = tracking.rollback_alias(client, settings.registered_model_name, alias)
    _console(False).print(f"{settings.registered_model_name}@{alias}: version {old} -> {new}")


class CardFormat(StrEnum):
    md = "md"
    json = "json"


@app.command()
@cli_errors
def card(
    version: Annotated[str, typer.Argument(help="registered version number")],
    format: Annotated[CardFormat, typer.Option("--format", help="md (Markdown) or json")] = CardFormat.md,
) -> None:
    """The version's model card: data, model, validation metrics, bias report, mitigations."""
    from cli.common import get_settings
    from pipelines.card import load_model_card

    if not version.isdigit():
        raise ValueError(f"version must be a version number, got {version!r}")
    model_card = load_model_card(get_settings(), version)
    typer.echo(model_card.to_json() if format is CardFormat.json else model_card.to_markdown())


@app.command("evaluate-offpolicy")
@cli_errors
def evaluate_offpolicy(
    version: Annotated[str, typer.Argument(help="registered version number (the candidate)")],
    since: Annotated[datetime | None, typer.Option(help="only impressions at or after this time")] = None,
    alias: Annotated[str | None, typer.Option(help="compare with the version behind this alias")] = None,
    outcome: Annotated[str, typer.Option(help="event type counted as a click")] = "click",
    bootstrap: Annotated[int, typer.Option(min=50, help="bootstrap resamples of the intervals")] = 500,
) -> None:
    """The version's click-through (expected clicks per impression) estimated off-policy by IPS,
    SNIPS and doubly robust from the impressions logged with propensities, beside production's
    on the same log, with 95% bootstrap intervals."""
    from cli.common import err_console, get_settings
    from pipelines.offpolicy import evaluate_offpolicy as run

    if not version.isdigit():
        raise UsageError(f"version must be a version number, got {version!r}")
    with err_console.status("estimating"):
        out = run(get_settings(), version, alias=alias, since=since, outcome=outcome, bootstrap=bootstrap)
    c = out.comparison
    table = Table(title=f"off-policy click-through on {c.candidate.impressions:,} impressions (95% bootstrap)")
    table.add_column("estimator")
    table.add_column(f"version {out.candidate_version}", justify="right")
    table.add_column(f"{out.alias} (version {out.production_version})", justify="right")
    a, b = c.candidate, c.production
    for label, pair in (("IPS", (a.ips, b.ips)), ("SNIPS", (a.snips, b.snips)), ("DR", (a.dr, b.dr))):
        table.add_row(label, *(f"{e.value:.4f} [{e.interval[0]:.4f}, {e.interval[1]:.4f}]" for e in pair))
    d = c.difference
    table.add_row("SNIPS difference", f"{d.value:+.4f} [{d.interval[0]:+.4f}, {d.interval[1]:+.4f}]", "")
    table.add_row("matched (impression, position)", f"{a.matched:,}", f"{b.matched:,}")
    _console(True).print(table)  # two columns of estimates with intervals: wide in a pipe
