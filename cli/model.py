"""`recsys model …`: the registry's versions, and rolling an alias back to the previous good one."""

from __future__ import annotations

import sys
from datetime import datetime
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.common import UsageError, cli_errors

app = typer.Typer(
    help="Registered model versions: list, card, rollback, off-policy evaluation.",
    no_args_is_help=True,
    add_completion=False,
)
# the version table has eleven columns: into a log or a pipe (cron, CI) print it wide rather
# than squeezed into rich's default 80 columns
console = Console(width=None if sys.stdout.isatty() else 220, markup=False)  # text, never markup (cli/common.py)


@app.command("list")
@cli_errors
def list_versions(limit: Annotated[int, typer.Option(min=1, help="newest N versions")] = 20) -> None:
    """Versions with their gate outcome, metrics and tags, newest first."""
    from cli.common import get_settings
    from pipelines import tracking

    settings = get_settings()
    client = tracking.setup(settings)
    rows = tracking.list_versions(client, settings.registered_model_name)[:limit]
    table = Table(title=f"{settings.registered_model_name} versions")
    for col in (
        "version",
        "aliases",
        "gate",
        "ndcg@10",
        "recall@10",
        "coverage",
        "amplif.",
        "group gap",
        "index (recall@10, p50)",
        "created",
        "tags",
    ):
        table.add_column(
            col,
            justify="right"
            if col in ("version", "ndcg@10", "recall@10", "coverage", "amplif.", "group gap")
            else "left",
        )
    for r in rows:
        m = r["metrics"]

        def fmt(key: str, m: dict = m) -> str:
            return f"{m[key]:.4f}" if key in m else "-"

        gate = r["tags"].get("gate", "-")
        if "rejected" in r["tags"]:
            gate = Text.assemble(("rejected", "red"), f": {r['tags']['rejected'][:60]}")
        elif "promoted" in r["tags"]:
            gate = Text("promoted", style="green")
        other = ", ".join(
            f"{k}={v}"
            for k, v in sorted(r["tags"].items())
            if k not in ("rejected", "gate", "promoted", "manifest_sha256") and not k.startswith("index.")
        )
        table.add_row(
            r["version"],
            ",".join(r["aliases"]) or "",
            gate,
            fmt("ndcg_at_10"),
            fmt("recall_at_10"),
            fmt("coverage"),
            fmt("bias_amplification"),
            fmt("bias_max_group_gap"),
            index_summary(r["tags"], m),
            r["created"],
            other,
        )
    console.print(table)


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
    console.print(f"{settings.registered_model_name}@{alias}: version {old} -> {new}")


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
    from cli.common import get_settings
    from pipelines.offpolicy import evaluate_offpolicy as run

    if not version.isdigit():
        raise UsageError(f"version must be a version number, got {version!r}")
    with console.status("estimating"):
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
    console.print(table)
