"""One set of rules for values that come from outside: ids, labels, free text, JSON values.

The HTTP schemas (``api/schemas.py``), the dataset loaders (``recsys/datasets``) and the feature
store all check input with these functions, so a value the API refuses is refused by
``recsys ingest`` too, and nothing the store holds is unreachable or unserializable later.

Rules, and why:

- ids (user, item, event): 1..255 characters, not blank, no NUL (PostgreSQL text cannot hold it),
  no ``/`` (an id must be addressable as one path segment: ``/items/{item_id}``), no lone UTF-16
  surrogate (not encodable as UTF-8: the database driver and the JSON encoder both fail on it),
  no other control characters.
- labels (categories, attribute keys, event types, variants): the same characters, 1..255.
- free text (titles, descriptions, attribute string values): no NUL, no lone surrogate.
- JSON values (attributes): finite numbers only (NaN/Infinity are not JSON), strings as free
  text, nested at most a few levels.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

ID_MAX_LENGTH = 255
LABEL_MAX_LENGTH = 255
TEXT_MAX_LENGTH = 10_000
JSON_MAX_DEPTH = 4

# Characters no stored string may hold: NUL and the other C0 controls except tab/newline/CR,
# DEL, and lone surrogates.
_FORBIDDEN_ANYWHERE = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff"
_BAD_TEXT = re.compile(f"[{_FORBIDDEN_ANYWHERE}]")
# Ids and labels additionally refuse "/" and every whitespace character but a plain space.
_BAD_ID = re.compile(f"[{_FORBIDDEN_ANYWHERE}/\t\n\r]")
_BAD_LABEL = re.compile(f"[{_FORBIDDEN_ANYWHERE}\t\n\r]")

#: for pydantic ``StringConstraints(pattern=...)``: the same rule as :func:`id_problem`
#: (the Rust regex engine sees surrogates as invalid input and refuses the string anyway).
ID_PATTERN = r"^[^\x00-\x1f\x7f/]*[^\x00-\x1f\x7f/\s][^\x00-\x1f\x7f/]*$"
LABEL_PATTERN = r"^[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s][^\x00-\x1f\x7f]*$"
TEXT_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"


class InvalidValue(ValueError):
    """A value from outside breaks one of the rules above; ``field`` names where it was."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _describe(value: str, limit: int = 40) -> str:
    shown = value if len(value) <= limit else value[:limit] + f"… ({len(value):,} characters)"
    return repr(shown)


def id_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid id, or None when it is."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "must not be empty or blank"
    if len(value) > ID_MAX_LENGTH:
        return f"is {len(value):,} characters long (at most {ID_MAX_LENGTH})"
    bad = _BAD_ID.search(value)
    if bad:
        return f"contains {_char_name(bad.group())}: {_describe(value)}"
    return None


def label_problem(value: Any, max_length: int = LABEL_MAX_LENGTH) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "must not be empty or blank"
    if len(value) > max_length:
        return f"is {len(value):,} characters long (at most {max_length})"
    bad = _BAD_LABEL.search(value)
    if bad:
        return f"contains {_char_name(bad.group())}: {_describe(value)}"
    return None


def text_problem(value: Any, max_length: int = TEXT_MAX_LENGTH) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if len(value) > max_length:
        return f"is {len(value):,} characters long (at most {max_length:,})"
    bad = _BAD_TEXT.search(value)
    if bad:
        return f"contains {_char_name(bad.group())}"
    return None


def json_problem(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` cannot be stored as JSON (non-finite number, bad string, too deep), or None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return None
    if isinstance(value, (float, np.floating)):
        return None if math.isfinite(float(value)) else f"is not a finite number ({value!r})"
    if isinstance(value, str):
        return text_problem(value, max_length=TEXT_MAX_LENGTH)
    if depth >= JSON_MAX_DEPTH:
        return f"is nested deeper than {JSON_MAX_DEPTH} levels"
    if isinstance(value, dict):
        for k, v in value.items():
            if (p := label_problem(k) if isinstance(k, str) else "has a key that is not a string"):
                return f"key {k!r}: {p}" if isinstance(k, str) else p
            if (p := json_problem(v, depth + 1)) is not None:
                return f"[{k!r}] {p}"
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        for i, v in enumerate(value):
            if (p := json_problem(v, depth + 1)) is not None:
                return f"[{i}] {p}"
        return None
    return f"has a value of type {type(value).__name__}, which is not JSON"


def check_id(value: Any, field: str) -> str:
    if (p := id_problem(value)) is not None:
        raise InvalidValue(field, p)
    return value


def check_label(value: Any, field: str) -> str:
    if (p := label_problem(value)) is not None:
        raise InvalidValue(field, p)
    return value


def check_text(value: Any, field: str, max_length: int = TEXT_MAX_LENGTH) -> str:
    if (p := text_problem(value, max_length)) is not None:
        raise InvalidValue(field, p)
    return value


def check_json(value: Any, field: str) -> Any:
    if (p := json_problem(value)) is not None:
        raise InvalidValue(field, p)
    return value


def first_bad_id(ids: pd.Series) -> tuple[int, str] | None:
    """(row position, reason) of the first invalid id in a column of strings, or None.

    Vectorized: a loader checks millions of ids this way in well under a second.
    """
    return _first_bad(ids, _BAD_ID, ID_MAX_LENGTH, id_problem)


def first_bad_label(labels: pd.Series) -> tuple[int, str] | None:
    return _first_bad(labels, _BAD_LABEL, LABEL_MAX_LENGTH, label_problem)


def _first_bad(values: pd.Series, bad_chars: re.Pattern, max_length: int, problem) -> tuple[int, str] | None:
    # Object strings stay Python strings (they may hold surrogates, which Arrow cannot).
    if values.dtype == object:
        s = pd.Series([v if isinstance(v, str) else str(v) for v in values], dtype=object)
    else:
        s = values.astype(str)
    pattern = bad_chars.pattern
    if s.dtype != object:
        # Arrow-backed strings are valid UTF-8 already (no surrogates), and Arrow's regex
        # engine refuses a pattern that names them.
        pattern = pattern.replace("\ud800-\udfff", "")
    bad = ((s.str.len() > max_length) | s.str.contains(pattern, regex=True) | (s.str.strip() == "")).to_numpy()
    if not bad.any():
        return None
    pos = int(np.flatnonzero(bad)[0])
    return pos, problem(s.iloc[pos]) or "is not valid"


def _char_name(ch: str) -> str:
    if ch == "/":
        return "'/'"
    if "\ud800" <= ch <= "\udfff":
        return f"a lone surrogate (U+{ord(ch):04X})"
    return f"a control character (U+{ord(ch):04X})"


__all__ = [
    "ID_MAX_LENGTH",
    "ID_PATTERN",
    "InvalidValue",
    "LABEL_PATTERN",
    "TEXT_PATTERN",
    "check_id",
    "check_json",
    "check_label",
    "check_text",
    "first_bad_id",
    "first_bad_label",
    "id_problem",
    "json_problem",
    "label_problem",
    "text_problem",
]
