"""The in-memory form every loader returns and the feature store accepts.

Column contract (all ids are strings: the dataset's own ids, e.g. MovieLens user "1"):

``events``  event_id (str, unique), user_id (str), item_id (str) — either may be a pandas
            Categorical of str (the offline snapshot's form: codes, no per-row strings) —, event_type (str:
            view/click/purchase/rating/...), value (float64), timestamp (datetime64[ns, UTC])
``items``   item_id (str, unique), title (str), description (str), categories (list[str]),
            attributes (dict), available (bool)
``users``   user_id (str, unique), attributes (dict)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

EVENT_COLUMNS = ["event_id", "user_id", "item_id", "event_type", "value", "timestamp"]
ITEM_COLUMNS = ["item_id", "title", "description", "categories", "attributes", "available"]
USER_COLUMNS = ["user_id", "attributes"]


class DatasetError(ValueError):
    """Input data that cannot be loaded: the message says what and where."""


@dataclass
class Dataset:
    events: pd.DataFrame
    items: pd.DataFrame = field(default_factory=lambda: empty_items())
    users: pd.DataFrame = field(default_factory=lambda: empty_users())
    name: str = "dataset"

    def __post_init__(self) -> None:
        self.events = normalize_events(self.events)
        self.items = normalize_items(self.items, self.events)
        self.users = normalize_users(self.users, self.events)

    def stats(self) -> dict:
        ts = self.events["timestamp"]
        return {
            "n_events": int(len(self.events)),
            "n_users": int(self.events["user_id"].nunique()),
            "n_items": int(self.events["item_id"].nunique()),
            "n_catalog_items": int(len(self.items)),
            "min_timestamp": ts.min().isoformat() if len(ts) else None,
            "max_timestamp": ts.max().isoformat() if len(ts) else None,
        }


def empty_items() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in ITEM_COLUMNS})


def empty_users() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in USER_COLUMNS})


def make_event_ids(events: pd.DataFrame) -> pd.Series:
    """Deterministic ids for sources without their own, so re-ingesting a file is idempotent."""
    key = (
        events["user_id"].astype(str)
        + "\x1f"
        + events["item_id"].astype(str)
        + "\x1f"
        + events["event_type"].astype(str)
        + "\x1f"
        + events["timestamp"].astype("int64").astype(str)
    )
    return key.map(lambda s: hashlib.blake2b(s.encode(), digest_size=12).hexdigest())


def normalize_events(events: pd.DataFrame) -> pd.DataFrame:
    missing = {"user_id", "item_id"} - set(events.columns)
    if missing:
        raise DatasetError(f"events are missing required columns: {sorted(missing)}")
    events = events.reset_index(drop=True)
    out = pd.DataFrame({"user_id": _id_column(events["user_id"]), "item_id": _id_column(events["item_id"])})
    out["event_type"] = (
        events["event_type"].astype(str).values if "event_type" in events else "interaction"
    )
    if "value" in events:
        value = pd.to_numeric(events["value"], errors="coerce")
        if value.isna().any():
            bad = int(np.flatnonzero(value.isna().to_numpy())[0])
            raise DatasetError(f"event row {bad}: 'value' is not a number: {events['value'].iloc[bad]!r}")
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
            raise DatasetError(f"event row {bad}: 'timestamp' is not a time: {events['timestamp'].iloc[bad]!r}")
        out["timestamp"] = ts.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    else:
        out["timestamp"] = pd.Timestamp("1970-01-01", tz="UTC")
    if "event_id" in events and events["event_id"].notna().all():
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


def normalize_items(items: pd.DataFrame | None, events: pd.DataFrame) -> pd.DataFrame:
    items = items if items is not None and len(items.columns) else empty_items()
    items = items.copy()
    if "item_id" not in items:
        raise DatasetError("items are missing the 'item_id' column")
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


def normalize_users(users: pd.DataFrame | None, events: pd.DataFrame) -> pd.DataFrame:
    users = users if users is not None and len(users.columns) else empty_users()
    users = users.copy()
    if "user_id" not in users:
        raise DatasetError("users are missing the 'user_id' column")
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
