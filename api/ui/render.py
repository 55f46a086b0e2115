"""Templates (Jinja2, autoescaped) and Markdown → HTML for the dashboard."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "–"


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


env = Environment(
    loader=PackageLoader("api.ui", "templates"),
    autoescape=select_autoescape(("html",), default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters.update(num=_num, when=_when, pct=_pct)


def page(name: str, **context: Any) -> str:
    return env.get_template(name).render(**context)


# ---- Markdown (model cards, experiment reports) -------------------------------------------
# CommonMark with tables; raw HTML in the source is shown as text, never passed through.
_md = MarkdownIt("commonmark", {"html": False}).enable("table")


def markdown(text: str, link: Callable[[str], str | None]) -> Markup:
    """``text`` as HTML. Relative image and link targets (files next to the Markdown) are
    rewritten by ``link(name)``; a target it returns None for is left out (no src/href)."""
    tokens = _md.parse(text)
    for token in tokens:
        for child in token.children or ():
            attr = "src" if child.type == "image" else "href" if child.type == "link_open" else None
            if attr is None:
                continue
            target = str(child.attrGet(attr) or "")
            if "://" in target or target.startswith(("#", "/", "mailto:")):
                continue
            url = link(target)
            if url is None:
                child.attrs.pop(attr, None)
            else:
                child.attrSet(attr, url)
    return Markup(_md.renderer.render(tokens, _md.options, {}))
