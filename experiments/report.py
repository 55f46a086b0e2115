"""Comparison table and report folder: ``comparison.csv``, ``report.md``, PNG plots (matplotlib
Agg), ``breakdown_<model>.csv``; the same from past MLflow runs (``compare``).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.spec import METRICS

logger = logging.getLogger(__name__)

#: higher is better for these; lower for avg_rec_popularity and gini (less popularity bias)
LOWER_IS_BETTER = {"avg_rec_popularity", "gini"}
INFO_COLUMNS = ["kind", "run_id", "params", "index"]
#: a child run's parameter naming the index kind training's choice picked for the model
#: (recsys/index/choice.py): the one its ``index_recall_at_10`` was measured on
INDEX_KIND_PARAM = "index.kind"
TIME_COLUMNS = ["time_train_s", "time_eval_s", "index_recall_at_10"]
#: the bias report's columns at the main k (recsys.evaluation.bias), shown beside accuracy;
#: lower is better for each: exposure amplification, the largest worst/best nDCG gap over user
#: attributes, the largest attribute leakage AUC of the user vectors
BIAS_COLUMNS = ["bias_amplification", "bias_max_group_gap", "bias_max_leakage_auc"]
_METRIC_RE = re.compile(r"^(?P<name>[a-z_]+)_at_(?P<k>\d+)$")
#: the columns of the terminal table (the report and CSV carry all of them)
TERMINAL_METRICS = ("precision", "recall", "ndcg", "map", "mrr", "coverage", "diversity", "avg_rec_popularity")
PLOTS = ("metric_bars.png", "metric_at_k.png", "popularity_vs_coverage.png", "training_time.png")


def metric_columns(columns: Iterable[str]) -> list[str]:
    """``<metric>_at_<k>`` columns in METRICS order, then by k."""
    found = []
    for c in columns:
        m = _METRIC_RE.match(c)
        if m and m["name"] in METRICS:
            found.append((METRICS.index(m["name"]), int(m["k"]), c))
    return [c for *_, c in sorted(found)]


def ks_of(columns: Iterable[str]) -> list[int]:
    return sorted({int(m["k"]) for c in columns if (m := _METRIC_RE.match(c)) and m["name"] in METRICS})


def _ordered(df: pd.DataFrame) -> pd.DataFrame:
    metrics = metric_columns(df.columns)
    rest = [
        c
        for c in df.columns
        if c not in metrics
        and c not in INFO_COLUMNS
        and c not in TIME_COLUMNS
        and c not in BIAS_COLUMNS
        and c != "error"
    ]
    cols = (
        [c for c in INFO_COLUMNS if c in df]
        + metrics
        + [c for c in BIAS_COLUMNS if c in df]
        + [c for c in TIME_COLUMNS if c in df]
        + rest
        + (["error"] if "error" in df else [])
    )
    return df[cols]


def comparison_frame(results) -> pd.DataFrame:
    """One row per model configuration (index ``model``) from ``runner.ModelResult``s."""
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "model": r.config.name,
            "kind": r.config.kind,
            "run_id": r.run_id,
            "params": json.dumps(
                {**r.config.params, "weighting": r.config.weighting, "alpha": r.config.alpha}, default=str
            ),
            "index": r.index_kind,
        }
        row.update(r.metrics)
        if r.error:
            row["error"] = r.error
        rows.append(row)
    return _ordered(pd.DataFrame(rows).set_index("model"))


def comparison_from_runs(runs) -> pd.DataFrame:
    """The comparison table from MLflow child runs (``mlflow.entities.Run``)."""
    rows = []
    for run in runs:
        p, m, tags = run.data.params, run.data.metrics, run.data.tags
        params = {k.removeprefix("param."): v for k, v in p.items() if k.startswith("param.")}
        params.update({k: p[k] for k in ("weighting", "alpha") if k in p})
        row: dict[str, Any] = {
            "model": tags.get("recsys.experiment.config", tags.get("mlflow.runName", run.info.run_id)),
            "kind": p.get("kind", ""),
            "run_id": run.info.run_id,
            "params": json.dumps(params),
            "index": p.get(INDEX_KIND_PARAM),
        }
        row.update({k: v for k, v in m.items() if not k.endswith("_by_k")})
        if run.info.status == "FAILED":
            row["error"] = tags.get("recsys.experiment.error", "failed")
        rows.append(row)
    if not rows:
        raise ValueError("no runs to compare")
    df = pd.DataFrame(rows)
    # the same config name from two parent runs: keep both, distinguished by run id
    dup = df["model"].duplicated(keep=False)
    df.loc[dup, "model"] = df.loc[dup, "model"] + " (" + df.loc[dup, "run_id"].str[:8] + ")"
    return _ordered(df.set_index("model"))


def best_models(df: pd.DataFrame) -> dict[str, str]:
    """Best model name per metric column (max, or min for LOWER_IS_BETTER)."""
    out = {}
    for c in metric_columns(df.columns):
        s = pd.to_numeric(df[c], errors="coerce").dropna()
        if s.empty:
            continue
        name = _METRIC_RE.match(c)["name"]
        out[c] = s.idxmin() if name in LOWER_IS_BETTER else s.idxmax()
    for c in BIAS_COLUMNS:
        s = pd.to_numeric(df[c], errors="coerce").dropna() if c in df else pd.Series(dtype=float)
        if not s.empty:
            out[c] = s.idxmin()
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "—"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def _markdown_table(df: pd.DataFrame, bold: dict[str, str] | None = None) -> str:
    cols = [df.index.name or ""] + list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * len(df.columns)) + "|"]
    for name, row in df.iterrows():
        cells = []
        for c in df.columns:
            text = _fmt(row[c])
            if bold and bold.get(c) == name:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join([str(name)] + cells) + " |")
    return "\n".join(lines)


def main_columns(df: pd.DataFrame, k: int) -> list[str]:
    return [c for c in metric_columns(df.columns) if c.endswith(f"_at_{k}")]


def rich_table(df: pd.DataFrame, k: int, title: str = ""):
    """A rich Table of the metrics at ``k`` (best per column in bold green) plus timings."""
    from rich.table import Table
    from rich.text import Text

    compact = [f"{m}_at_{k}" for m in TERMINAL_METRICS if f"{m}_at_{k}" in df]
    cols = (
        (compact or main_columns(df, k)) + [c for c in BIAS_COLUMNS if c in df] + [c for c in TIME_COLUMNS if c in df]
    )
    best = best_models(df)
    table = Table(title=title or f"metrics @ {k}", show_lines=False)
    table.add_column("model", overflow="fold")
    # the index kind beside its recall: the one training's choice picked for the model
    with_index = "index_recall_at_10" in cols and "index" in df
    for c in cols:
        table.add_column(
            c.replace("index_recall_at_10", "index R@10")
            .replace(f"_at_{k}", f"@{k}")
            .replace("bias_amplification", "amplif.")
            .replace("bias_max_group_gap", "group gap")
            .replace("bias_max_leakage_auc", "leakage AUC")
            .replace("avg_rec_popularity", "ARP")
            .replace("coverage", "cov")
            .replace("diversity", "ILD")
            .replace("time_train_s", "train s")
            .replace("time_eval_s", "eval s"),
            justify="right",
        )
    if with_index:
        table.add_column("index")
    for name, row in df.iterrows():
        # Text, never markup: a configuration's name (``als[weighting=bm25]``) is shown as written
        cells = []
        for c in cols:
            text = _fmt(row.get(c, float("nan")))
            cells.append(Text(text, style="bold green" if best.get(c) == name else ""))
        if with_index:
            cells.append(Text(str(row["index"]) if isinstance(row.get("index"), str) else "—"))
        if isinstance(row.get("error"), str):
            cells = [Text("failed", style="red")] + [Text("")] * (len(cells) - 1)
        table.add_row(Text(str(name)), *cells)
    return table


# ----------------------------------------------------------------------------------------------
# plots
# ----------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_bars(df: pd.DataFrame, k: int, path: Path) -> None:
    plt = _plt()
    names = [m for m in ("ndcg", "precision", "recall", "map", "hit_rate", "coverage") if f"{m}_at_{k}" in df]
    if not names:
        names = [_METRIC_RE.match(c)["name"] for c in main_columns(df, k)][:6]
    n = max(len(names), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 0.35 * len(df) * rows + 2.5 * rows), squeeze=False)
    for ax, m in zip(axes.flat, names):
        values = pd.to_numeric(df[f"{m}_at_{k}"], errors="coerce").fillna(0.0)
        best = values.idxmin() if m in LOWER_IS_BETTER else values.idxmax()
        colors = ["tab:orange" if name == best else "tab:blue" for name in values.index]
        ax.barh(range(len(values)), values.to_numpy(), color=colors)
        ax.set_yticks(range(len(values)), [str(i) for i in values.index], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{m}@{k} (best: {best})", fontsize=8)
        pos = list(values.index).index(best)
        ax.annotate(
            "★ best",
            (values[best], pos),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
            color="tab:orange",
        )
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metric_at_k(df: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    ks = ks_of(df.columns)
    names = [m for m in ("ndcg", "precision", "recall", "map") if any(f"{m}_at_{k}" in df for k in ks)]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(4.5 * max(len(names), 1), 3.6), squeeze=False)
    for ax, m in zip(axes.flat, names):
        for model, row in df.iterrows():
            ys = [pd.to_numeric(row.get(f"{m}_at_{k}"), errors="coerce") for k in ks]
            ax.plot(ks, ys, marker="o", label=str(model))
        ax.set_xlabel("k")
        ax.set_title(f"{m}@k", fontsize=9)
        ax.set_xticks(ks)
    if names:
        axes.flat[0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_popularity_coverage(df: pd.DataFrame, k: int, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    x_col, y_col = f"coverage_at_{k}", f"avg_rec_popularity_at_{k}"
    if x_col in df and y_col in df:
        x = pd.to_numeric(df[x_col], errors="coerce")
        y = pd.to_numeric(df[y_col], errors="coerce")
        ax.scatter(x, y)
        for name in df.index:
            ax.annotate(str(name), (x[name], y[name]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(f"catalogue coverage@{k} (higher: more of the catalogue)")
    ax.set_ylabel(f"avg recommended popularity@{k} (higher: more popularity bias)")
    ax.set_title("popularity bias vs coverage", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_training_time(df: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(df) + 1.5))
    train = pd.to_numeric(df.get("time_train_s", pd.Series(0.0, index=df.index)), errors="coerce").fillna(0.0)
    ev = pd.to_numeric(df.get("time_eval_s", pd.Series(0.0, index=df.index)), errors="coerce").fillna(0.0)
    pos = np.arange(len(df))
    ax.barh(pos, train.to_numpy(), label="train")
    ax.barh(pos, ev.to_numpy(), left=train.to_numpy(), label="evaluate")
    ax.set_yticks(pos, [str(i) for i in df.index], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.legend(fontsize=7)
    ax.set_title("training and evaluation time", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=\-]+", "_", name).strip("_") or "model"


def write_report(
    df: pd.DataFrame,
    out_dir: Path,
    *,
    title: str,
    ks: list[int] | None = None,
    main_k: int | None = None,
    breakdowns: dict[str, pd.DataFrame] | None = None,
    context: dict[str, Any] | None = None,
) -> Path:
    """Write ``comparison.csv``, ``breakdown_<model>.csv``, the PNG plots and ``report.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ks = ks or ks_of(df.columns)
    if not ks:
        raise ValueError("the comparison has no <metric>_at_<k> columns")
    main_k = main_k or (10 if 10 in ks else ks[len(ks) // 2])
    df.to_csv(out_dir / "comparison.csv")
    ok = df[df["error"].isna()] if "error" in df else df
    plot_metric_bars(ok, main_k, out_dir / "metric_bars.png")
    plot_metric_at_k(ok, out_dir / "metric_at_k.png")
    plot_popularity_coverage(ok, main_k, out_dir / "popularity_vs_coverage.png")
    plot_training_time(ok, out_dir / "training_time.png")
    best = best_models(ok)
    lines = [f"# {title}", ""]
    if context:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in context.items()] + [""]
    lines += [f"## Metrics @ {main_k}", "", "Best per column in **bold** (lowest for avg_rec_popularity and gini).", ""]
    lines += [
        _markdown_table(
            ok[main_columns(ok, main_k) + [c for c in [*BIAS_COLUMNS, *TIME_COLUMNS, "index"] if c in ok]], best
        ),
        "",
    ]
    lines += ["![metric bars](metric_bars.png)", "", "## Metrics at every k", ""]
    lines += [
        _markdown_table(
            ok[
                [
                    c
                    for c in metric_columns(ok.columns)
                    if _METRIC_RE.match(c)["name"] in ("precision", "recall", "ndcg", "map")
                ]
            ],
            best,
        ),
        "",
    ]
    lines += [
        "![metric@k](metric_at_k.png)",
        "",
        "## Popularity bias vs coverage",
        "",
        "![popularity vs coverage](popularity_vs_coverage.png)",
        "",
    ]
    lines += ["## Training time", "", "![training time](training_time.png)", ""]
    if "error" in df and df["error"].notna().any():
        lines += ["## Failed configurations", ""] + [f"- {n}: {e}" for n, e in df["error"].dropna().items()] + [""]
    if breakdowns:
        lines += [f"## Breakdown by user group (k = {main_k})", ""]
        for name, table in breakdowns.items():
            fname = f"breakdown_{_safe(name)}.csv"
            table.to_csv(out_dir / fname, index=False)
            lines += [f"### {name}", "", f"[{fname}]({fname})", ""]
            t = table.set_index(table["dimension"].astype(str) + "=" + table["group"].astype(str)).drop(
                columns=["dimension", "group", "k"]
            )
            t.index.name = "group"
            lines += [_markdown_table(t), ""]
    lines += ["## Parameters", ""] + [
        f"- **{n}** ({row.get('kind', '')}): `{row.get('params', '')}` run `{row.get('run_id', '')}`"
        + (f", index {row['index']}" if isinstance(row.get("index"), str) else "")
        for n, row in df.iterrows()
    ]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    logger.info("report written to %s", out_dir)
    return out_dir


def breakdowns_from_runs(client, runs, tmp: Path) -> dict[str, pd.DataFrame]:
    """The per-model breakdown CSVs logged by ``run`` (when present)."""
    from pipelines import tracking

    out = {}
    for run in runs:
        local = tracking.download_run_artifact(
            client, run.info.run_id, "breakdown/breakdown.csv", tmp / run.info.run_id
        )
        if local is not None and local.exists():
            name = run.data.tags.get("recsys.experiment.config", run.info.run_name)
            out[name] = pd.read_csv(local)
    return out
