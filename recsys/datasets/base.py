"""The in-memory form every loader returns and the feature store accepts.

Column contract (all ids are strings: the dataset's own ids, e.g. MovieLens user "1"):

``events``  event_id (str, unique), user_id (str), item_id (str) — either may be a pandas
            Categorical of str (the offline snapshot's form: codes, no per-row strings) —, event_type (str:
            view/click/purchase/rating/...), value (float64), timestamp (datetime64[ns, UTC])
``items``   item_id (str, unique), title (str), description (str), categories (list[str]),
            attributes (dict), available (bool)
``users``   user_id (str, unique), attributes (dict)

Normalization checks every value against :mod:`recsys.validation` (ids, labels, text, JSON), so
the loaders, the feature store and the API refuse the same values; a refusal is a
:class:`DatasetError` carrying the table, row position and column, which a loader turns into
the file's line.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import InitVar, dataclass, field

import numpy as np
import pandas as pd

from recsys.validation import first_bad_id, first_bad_label, json_problem, text_problem

logger = logging.getLogger(__name__)

EVENT_COLUMNS = ["event_id", "user_id", "item_id", "event_type", "value", "timestamp"]
ITEM_COLUMNS = ["item_id", "title", "description", "categories", "attributes", "available"]
USER_COLUMNS = ["user_id", "attributes"]


class DatasetError(ValueError):
    """Input data that cannot be loaded: the message says what and where.

    For one bad value, ``table`` ("events", "items", "users"), ``row`` (0-based position in
    the frame given to normalization), ``column`` and ``problem`` say where, so a loader can
    name the file line instead (:meth:`bad_value` builds one).
    """

    def __init__(
        self,
        message: str,
        *,
        table: str | None = None,
        row: int | None = None,
        column: str | None = None,
        problem: str | None = None,
    ) -> None:
        super().__init__(message)
        self.table, self.row, self.column, self.problem = table, row, column, problem

    @classmethod
    def bad_value(cls, table: str, row: int, column: str, problem: str) -> DatasetError:
        noun = {"events": "event", "items": "item", "users": "user"}.get(table, table)
        return cls(f"{noun} row {row}: {column} {problem}", table=table, row=row, column=column, problem=problem)


@dataclass
class Dataset:
    events: pd.DataFrame
    items: pd.DataFrame = field(default_factory=lambda: empty_items())
    users: pd.DataFrame = field(default_factory=lambda: empty_users())
    name: str = "dataset"
    #: check every value against recsys.validation (False only for data read back from the
    #: feature store, which checked it on the way in)
    validate: InitVar[bool] = True

    def __post_init__(self, validate: bool) -> None:
        self.events = normalize_events(self.events, validate=validate)
        self.items = normalize_items(self.items, self.events, validate=validate)
        self.users = normalize_users(self.users, self.events, validate=validate)

    def stats(self) -> dict:
        ts = self.events["timestamp"]
        return {
            "n_events": len(self.events),
            "n_users": int(self.events["user_id"].nunique()),
            "n_items": int(self.events["item_id"].nunique()),
            "n_catalog_items": len(self.items),
            "min_timestamp": ts.min().isoformat() if len(ts) else None,
            "max_timestamp": ts.max().isoformat() if len(ts) else None,
        }


def empty_items() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in ITEM_COLUMNS})


def empty_users() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in USER_COLUMNS})


def source_time(path) -> pd.Timestamp:
    """The time given to events of a file without a timestamp column: the file's modification
    time (UTC, whole ms) — when its content last changed, so re-ingesting the unchanged file
    finds the same events and a new file of the same rows adds new ones."""
    from pathlib import Path

    ts = pd.Timestamp(Path(path).stat().st_mtime_ns, unit="ns", tz="UTC").floor("ms")
    logger.info("%s has no timestamp column: its events are at the file's modification time %s", path, ts)
    return ts


def make_event_ids(events: pd.DataFrame) -> pd.Series:
    """The one derivation of event ids for sources without their own.

    The id hashes every field that makes two events different — user, item, type, value and
    time (ms) — and the row's occurrence number among identical rows of the batch, in batch
    order: two identical clicks in one batch are two events, and re-ingesting the same file
    gives the same ids (idempotent).
    """
    if len(events) == 0:
        return pd.Series([], dtype="str")
    sep = "\x1f"
    key = (
        events["user_id"].astype(str)
        + sep
        + events["item_id"].astype(str)
        + sep
        + events["event_type"].astype(str)
        + sep
        + events["value"].astype("float64").map(repr)
        + sep
        + (events["timestamp"].array.as_unit("ns").asi8 // 1_000_000).astype(str)
    )
    key = key.reset_index(drop=True)
    key = key + sep + key.groupby(key, sort=False).cumcount().astype(str)
    return key.map(lambda s: hashlib.blake2b(s.encode(), digest_size=12).hexdigest()).astype("str")


def normalize_events(events: pd.DataFrame, *, validate: bool = True) -> pd.DataFrame:
    """Events in the column contract. Without a ``timestamp`` column every event is at
    1970-01-01, with a warning (file loaders give such files their modification time,
    :func:`source_time`)."""
    missing = {"user_id", "item_id"} - set(events.columns)
    if missing:
        raise DatasetError(f"events are missing required columns: {sorted(missing)}")
    events = events.reset_index(drop=True)
    # Checked before astype(str): a lone surrogate cannot even be converted to an Arrow string.
    if validate:
        _check_ids(events, "events", "user_id", "item_id")
    if validate and "event_type" in events:
        _check_labels(events, "events", "event_type")
    out = pd.DataFrame({"user_id": _id_column(events["user_id"]), "item_id": _id_column(events["item_id"])})
    out["event_type"] = events["event_type"].astype(str).values if "event_type" in events else "interaction"
    if "value" in events:
        value = pd.to_numeric(events["value"], errors="coerce")
        finite = np.isfinite(value.to_numpy(dtype="float64", na_value=np.nan))
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise DatasetError.bad_value(
                "events", bad, "value", f"is not a finite number: {events['value'].iloc[bad]!r}"
            )
        out["value"] = value.astype("float64").values
    else:
        out["value"] = 1.0
    if "timestamp" in events:
        ts = events["timestamp"]
        if pd.api.types.is_numeric_dtype(ts):
            ts = pd.to_datetime(ts, unit="s", utc=True)
        else:
            ts = pd.to_datetime(ts, utc=True, errors="coerce")
        if ts.isna().any():
            bad = int(np.flatnonzero(ts.isna().to_numpy())[0])
            raise DatasetError.bad_value(
                "events", bad, "timestamp", f"is not a time: {events['timestamp'].iloc[bad]!r}"
            )
        out["timestamp"] = ts.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    else:
        if len(events):
            logger.warning("%d events have no timestamp: they are placed at 1970-01-01", len(events))
        out["timestamp"] = pd.Timestamp("1970-01-01", tz="UTC")
    if "event_id" in events and events["event_id"].notna().all():
        if validate:
            _check_ids(events, "events", "event_id")
        out["event_id"] = events["event_id"].astype(str).values
    else:
        out["event_id"] = make_event_ids(out)
    return out[EVENT_COLUMNS].reset_index(drop=True)


def _id_column(col: pd.Series) -> pd.Series:
    """Ids as str; a Categorical stays one (only its categories are made str)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = col.cat.categories
        return col if cats.dtype == "str" else col.cat.rename_categories(cats.astype(str))
    return col.astype(str)


def normalize_items(items: pd.DataFrame | None, events: pd.DataFrame, *, validate: bool = True) -> pd.DataFrame:
    items = items if items is not None and len(items.columns) else empty_items()
    items = items.copy()
    if "item_id" not in items:
        raise DatasetError("items are missing the 'item_id' column")
    items = items.reset_index(drop=True)
    if validate:
        _check_ids(items, "items", "item_id")
        _check_texts(items, "items", "title", "description")
        _check_categories(items)
        _check_json(items, "items", "attributes")
    items["item_id"] = items["item_id"].astype(str)
    known = pd.Index(items["item_id"])
    extra = pd.unique(events.loc[~events["item_id"].isin(known), "item_id"])
    if len(extra):
        items = pd.concat([items, pd.DataFrame({"item_id": extra})], ignore_index=True)
    for col, default in (("title", ""), ("description", "")):
        items[col] = items[col].fillna(default).astype(str) if col in items else default
    items["categories"] = _list_column(items.get("categories"), len(items))
    items["attributes"] = _dict_column(items.get("attributes"), len(items))
    items["available"] = items["available"].fillna(True).astype(bool) if "available" in items else True
    return items[ITEM_COLUMNS].drop_duplicates("item_id", keep="last").reset_index(drop=True)


def normalize_users(users: pd.DataFrame | None, events: pd.DataFrame, *, validate: bool = True) -> pd.DataFrame:
    users = users if users is not None and len(users.columns) else empty_users()
    users = users.copy()
    if "user_id" not in users:
        raise DatasetError("users are missing the 'user_id' column")
    users = users.reset_index(drop=True)
    if validate:
        _check_ids(users, "users", "user_id")
        _check_json(users, "users", "attributes")
    users["user_id"] = users["user_id"].astype(str)
    known = pd.Index(users["user_id"])
    extra = pd.unique(events.loc[~events["user_id"].isin(known), "user_id"])
    if len(extra):
        users = pd.concat([users, pd.DataFrame({"user_id": extra})], ignore_index=True)
    users["attributes"] = _dict_column(users.get("attributes"), len(users))
    return users[USER_COLUMNS].drop_duplicates("user_id", keep="last").reset_index(drop=True)


def _list_column(col: pd.Series | None, n: int) -> list:
    if col is None:
        return [[] for _ in range(n)]
    return [list(v) if isinstance(v, (list, tuple, np.ndarray)) else [] for v in col]


def _dict_column(col: pd.Series | None, n: int) -> list:
    if col is None:
        return [{} for _ in range(n)]
    return [dict(v) if isinstance(v, dict) else {} for v in col]


# ---------------------------------------------------------------------- value checks
# One rule set (recsys.validation); vectorized for the columns that can hold millions of rows.


def _check_ids(frame: pd.DataFrame, table: str, *columns: str) -> None:
    for col in columns:
        _check_column(frame[col], table, col, first_bad_id, distinct_first=col != "event_id")


def _check_labels(frame: pd.DataFrame, table: str, column: str) -> None:
    _check_column(frame[column], table, column, first_bad_label, distinct_first=True)


def _check_column(values: pd.Series, table: str, column: str, first_bad, *, distinct_first: bool) -> None:
    missing = np.flatnonzero(values.isna().to_numpy())
    if len(missing):
        raise DatasetError.bad_value(table, int(missing[0]), column, "is missing")
    if distinct_first:
        # A user or item id repeats on many events: check each distinct value once (pd.unique
        # keeps first-appearance order, so the first bad distinct value is the first bad row's).
        distinct = pd.Series(pd.unique(values), dtype=values.dtype)
        if (bad := first_bad(distinct)) is None:
            return
        row = int(np.flatnonzero((values == distinct.iloc[bad[0]]).to_numpy())[0])
        raise DatasetError.bad_value(table, row, column, bad[1])
    if (bad := first_bad(values)) is not None:
        raise DatasetError.bad_value(table, bad[0], column, bad[1])


def _check_texts(frame: pd.DataFrame, table: str, *columns: str) -> None:
    for col in columns:
        if col not in frame:
            continue
        for row, value in enumerate(frame[col]):
            if isinstance(value, str) and (problem := text_problem(value)) is not None:
                raise DatasetError.bad_value(table, row, col, problem)


def _check_categories(items: pd.DataFrame) -> None:
    if "categories" not in items:
        return
    lists = items["categories"]
    flat = lists[lists.map(lambda v: isinstance(v, (list, tuple, np.ndarray)))].explode().dropna()
    if len(flat) and (bad := first_bad_label(flat.reset_index(drop=True))) is not None:
        raise DatasetError.bad_value("items", int(flat.index[bad[0]]), "categories", f"label {bad[1]}")


def _check_json(frame: pd.DataFrame, table: str, column: str) -> None:
    if column not in frame:
        return
    for row, value in enumerate(frame[column]):
        if isinstance(value, dict) and (problem := json_problem(value)) is not None:
            raise DatasetError.bad_value(table, row, column, problem)
