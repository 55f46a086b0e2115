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
- JSON values (attributes): finite numbers only (NaN/Infinity are not JSON), integers included:
  one that no float can hold (10**400) is refused too, strings as free text, nested at most a
  few levels.
- JSON text (request bodies): :func:`loads_json` parses it as I-JSON (RFC 7493): no NaN/Infinity
  tokens, no number that overflows a float (``1e400``), no lone surrogate in a string or key.
  Python's ``json.loads`` accepts all of these, and none of them can be stored or sent back.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
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
#: ``.`` and ``..`` are refused too: browsers and curl normalise them out of a path. The pattern
#: spells that without look-around: a non-blank character that is not a dot, or else only dots
#: and spaces other than exactly "." / "..".
_SPACE = r"[^\S\x00-\x1f\x7f]"
_DOTS = rf"(?:\.|{_SPACE})"
ID_PATTERN = (
    r"^(?:[^\x00-\x1f\x7f/]*[^\x00-\x1f\x7f/\s.][^\x00-\x1f\x7f/]*"
    rf"|{_SPACE}+\.{_DOTS}*|\.{_DOTS}*{_SPACE}{_DOTS}*|\.\.\.{_DOTS}*)$"
)
_DOT_IDS = frozenset({".", ".."})
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
    if value in _DOT_IDS:
        return f"must not be {value!r} (paths normalise it away, like '/')"
    return _name_problem(value, ID_MAX_LENGTH, _BAD_ID)


def label_problem(value: Any, max_length: int = LABEL_MAX_LENGTH) -> str | None:
    return _name_problem(value, max_length, _BAD_LABEL)


def _name_problem(value: Any, max_length: int, bad_chars: re.Pattern) -> str | None:
    """Ids and labels: a non-blank string of at most ``max_length`` without ``bad_chars``."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "must not be empty or blank"
    if len(value) > max_length:
        return f"is {len(value):,} characters long (at most {max_length})"
    bad = bad_chars.search(value)
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
        try:
            float(value)  # readers (pandas, feature encoders, JSON clients) take numbers as floats
        except OverflowError:
            return f"is an integer of {int(value).bit_length():,} bits, too large for a number"
        return None
    if isinstance(value, (float, np.floating)):
        return None if math.isfinite(float(value)) else f"is not a finite number ({value!r})"
    if isinstance(value, str):
        return text_problem(value, max_length=TEXT_MAX_LENGTH)
    if depth >= JSON_MAX_DEPTH:
        return f"is nested deeper than {JSON_MAX_DEPTH} levels"
    if isinstance(value, dict):
        for k, v in value.items():
            if p := label_problem(k) if isinstance(k, str) else "has a key that is not a string":
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


def check_record(
    record: Mapping[str, Any],
    *,
    ids: Iterable[str] = (),
    labels: Iterable[str] = (),
    label_lists: Iterable[str] = (),
    texts: Iterable[str] = (),
    json_values: Iterable[str] = (),
    numbers: Iterable[str] = (),
) -> None:
    """Check the named fields of one record (absent or None fields are skipped); raises
    :class:`InvalidValue` naming the first field that breaks its rule."""
    for rule, names in ((id_problem, ids), (label_problem, labels), (text_problem, texts), (json_problem, json_values)):
        for name in names:
            if (value := record.get(name)) is not None and (p := rule(value)) is not None:
                raise InvalidValue(name, p)
    for name in label_lists:
        for i, value in enumerate(record.get(name) or ()):
            if (p := label_problem(value)) is not None:
                raise InvalidValue(f"{name}[{i}]", p)
    for name in numbers:
        value = record.get(name)
        is_number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        if is_number and (p := json_problem(value)) is not None:
            raise InvalidValue(name, p)


# ---- JSON text --------------------------------------------------------------------------------
class InvalidJSON(json.JSONDecodeError):
    """Syntactically JSON, but not storable: a non-finite number or a lone surrogate.

    ``path`` locates the value from the document root (object keys and array indexes), so an
    HTTP error can name the field: ``("events", 3, "value")``.
    """

    def __init__(self, msg: str, doc: str, pos: int, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(msg, doc, pos)
        self.path = tuple(path)

    def __reduce__(self):  # keep the path when pickled
        return self.__class__, (self.msg, self.doc, self.pos, self.path)


class _Refused:
    """Stands in for a number token no Python number holds as written (nan, inf, an int too long
    to convert); the path to it is found after parsing."""

    __slots__ = ("message", "token")

    def __init__(self, token: str, message: str) -> None:
        self.token, self.message = token, message


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _may_hold_surrogates(data: bytes | str) -> bool:
    """Cheap test that spares the walk over the parsed value for nearly every document: a lone
    surrogate comes from a ``\\udXXX`` escape, or raw from bytes decoded with surrogatepass
    (UTF-8 lead byte 0xED) or a str that holds one."""
    if isinstance(data, bytes):
        return b"\\ud" in data or b"\\uD" in data or b"\xed" in data
    return "\\ud" in data or "\\uD" in data or (not data.isascii() and _LONE_SURROGATE.search(data) is not None)


def loads_json(data: bytes | bytearray | str) -> Any:
    """``json.loads`` for text from outside: refuses ``NaN``, ``Infinity``, ``-Infinity``, numbers
    that overflow a float (``1e400``) or are too long to convert, and lone surrogates, raising
    :class:`InvalidJSON` (a ``json.JSONDecodeError``) with the path of the first one.
    Malformed JSON raises ``json.JSONDecodeError`` as ``json.loads`` does."""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data)
        # What json.loads does with bytes (surrogatepass included); UTF-16/32 bodies are tested
        # for surrogates as text.
        encoding = json.detect_encoding(data)
        text = data.decode(encoding, "surrogatepass")
        suspect = _may_hold_surrogates(data if encoding == "utf-8" else text)
    else:
        text = data
        suspect = _may_hold_surrogates(text)
    refused: list[_Refused] = []

    def refuse(token: str, message: str) -> _Refused:
        marker = _Refused(token, message)
        refused.append(marker)
        return marker

    def parse_constant(token: str) -> _Refused:  # NaN, Infinity, -Infinity
        return refuse(token, f"{token} is not a JSON number (numbers must be finite)")

    def parse_float(token: str) -> float | _Refused:
        value = float(token)
        if math.isinf(value):
            return refuse(token, f"{_short(token)} is too large for a number (it overflows to infinity)")
        return value

    def parse_int(token: str) -> int | _Refused:
        try:
            return int(token)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            return refuse(token, f"an integer of {len(token):,} digits is too long")

    value = json.loads(text, parse_constant=parse_constant, parse_float=parse_float, parse_int=parse_int)
    if refused or suspect:
        found = _first_refused(value)
        if found is not None:
            path, message, token = found
            raise InvalidJSON(message, text, max(text.find(token), 0) if token else 0, path)
    return value


def _first_refused(value: Any) -> tuple[tuple[str | int, ...], str, str] | None:
    """(path, message, token) of the first refused number or lone surrogate, in document order."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, _Refused):
            return path, node.message, node.token
        if isinstance(node, str):
            if (bad := _LONE_SURROGATE.search(node)) is not None:
                return path, f"contains {_char_name(bad.group())}, which is not valid Unicode", ""
        elif isinstance(node, dict):
            for key in node:
                if (bad := _LONE_SURROGATE.search(key)) is not None:
                    return path, f"has a key that contains {_char_name(bad.group())}, which is not valid Unicode", ""
            stack.extend(((*path, k), v) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(node))))
    return None


def _short(token: str, limit: int = 40) -> str:
    return token if len(token) <= limit else token[:limit] + f"… ({len(token):,} characters)"


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
    bad = (s.str.len() > max_length) | s.str.contains(pattern, regex=True) | (s.str.strip() == "")
    if problem is id_problem:
        bad |= s.isin(_DOT_IDS)
    bad = bad.to_numpy()
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
    "LABEL_PATTERN",
    "TEXT_PATTERN",
    "InvalidJSON",
    "InvalidValue",
    "check_id",
    "check_json",
    "check_label",
    "check_record",
    "check_text",
    "first_bad_id",
    "first_bad_label",
    "id_problem",
    "json_problem",
    "label_problem",
    "loads_json",
    "text_problem",
]
