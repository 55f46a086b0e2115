"""File loaders: public datasets and generic event tables -> :class:`Dataset` (pure pandas).

Every loader raises :class:`DatasetError` with the path, line or column at fault; ids are kept
as the strings found in the files (read with ``dtype=str`` so "007" stays "007").

Where a bad value is: text files name the file's line as an editor shows it (1-based, the
header and blank lines counted) and the data row (1-based, header and blank lines not
counted), e.g. ``events.csv line 7 (data row 5)``; Parquet files name the data row (1-based).
"""

from __future__ import annotations

import csv
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.datasets.base import Dataset, DatasetError, source_time

logger = logging.getLogger(__name__)

ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]
ML1M_OCCUPATIONS = [
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
]
# Goodreads shelf names that say nothing about the book itself.
GOODBOOKS_SHELF_TAGS = {
    "to-read",
    "currently-reading",
    "favorites",
    "favourites",
    "owned",
    "books-i-own",
    "owned-books",
    "my-books",
    "my-library",
    "default",
    "library",
    "to-buy",
    "wish-list",
    "kindle",
    "ebook",
    "ebooks",
    "audiobook",
    "audiobooks",
    "books",
    "book-club",
    "re-read",
    "i-own",
    "own-it",
    "read",
    "abandoned",
    "did-not-finish",
    "dnf",
    "own",
    "on-hold",
    "maybe",
    "e-book",
    "to-read-fiction",
}
EVENT_FIELDS = ["event_id", "user_id", "item_id", "event_type", "value", "timestamp"]
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DatasetError(f"{what} not found: {path}")
    return path


def _require_file(path: Path, what: str) -> Path:
    if _require(path, what).is_dir():
        raise DatasetError(f"{what} {path} is a directory: give the file itself")
    return path


def _require_dir(path: Path, what: str) -> Path:
    if not _require(path, what).is_dir():
        raise DatasetError(f"{what} {path} is a file: give the unpacked folder")
    return path


Where = Callable[[int], str]


def _text_file_where(path: Path, *, header: bool, sep: str = ",", encoding: str = "utf-8") -> Where:
    """``where(i)`` for data row ``i`` (0-based, as pandas numbers it) of a delimited text file."""

    def where(i: int) -> str:
        line = _line_of_data_row(path, i, header=header, sep=sep, encoding=encoding)
        return f"{path} line {line} (data row {i + 1})" if line is not None else f"{path} data row {i + 1}"

    return where


def _parquet_where(path: Path) -> Where:
    return lambda i: f"{path} data row {i + 1}"


def _line_of_data_row(path: Path, row: int, *, header: bool, sep: str, encoding: str) -> int | None:
    """The line on which data row ``row`` (0-based) starts, counting lines as an editor does.

    Read again only when reporting an error: pandas skips blank lines and lets a quoted field
    span lines, so the row position alone does not give the line.
    """
    csv.field_size_limit(sys.maxsize)  # a hostile 100 MB field must not stop the error report
    try:
        with path.open(newline="", encoding=encoding, errors="replace") as f:
            reader = csv.reader(f, delimiter=sep)
            last_line, seen = 0, -1 if header else 0
            for record in reader:
                start, last_line = last_line + 1, reader.line_num
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue  # pandas skips blank lines
                if seen == row:
                    return start
                seen += 1
    except (OSError, csv.Error):
        return None
    return None


def _build(
    source: Path,
    name: str,
    events: pd.DataFrame,
    items: pd.DataFrame | None = None,
    users: pd.DataFrame | None = None,
    where: dict[str, Where] | None = None,
    columns: dict[tuple[str, str], str] | None = None,
) -> Dataset:
    """The normalized :class:`Dataset`; a bad value is reported at its file line via ``where``
    (table name -> locator), under the file's column name from ``columns``."""
    try:
        dataset = Dataset(events=events, items=items, users=users, name=name)
    except DatasetError as exc:
        locate = (where or {}).get(exc.table or "")
        if exc.row is None or exc.problem is None:
            raise
        if locate is None:
            raise DatasetError(f"{source}: {exc}") from exc
        column = (columns or {}).get((exc.table, exc.column), exc.column)
        raise DatasetError(f"{locate(exc.row)}: {column} {exc.problem}") from exc
    return _nonempty(dataset, source)


def _nonempty(dataset: Dataset, source: Path) -> Dataset:
    if len(dataset.events) == 0:
        raise DatasetError(f"no events in {source}")
    logger.info("loaded %s from %s: %s", dataset.name, source, dataset.stats())
    return dataset


def _read_delimited(
    path: Path, sep: str, names: list[str], usecols: list[int] | None = None, **kw: Any
) -> pd.DataFrame:
    """Headerless delimited file as str columns; parse errors name the file and line."""
    try:
        return pd.read_csv(
            path,
            sep=sep,
            header=None,
            names=names,
            usecols=usecols,
            dtype=str,
            keep_default_na=False,
            engine="c",
            **kw,
        )
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DatasetError(f"cannot parse {path}: {exc}") from exc


def _numeric(series: pd.Series, path: Path, column: str, first_line: int) -> pd.Series:
    out = pd.to_numeric(series, errors="coerce")
    bad = np.flatnonzero(out.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise DatasetError(f"{path} line {i + first_line}: {column} is not a number: {series.iloc[i]!r}")
    return out


def _year(release: str, title: str) -> int | None:
    m = re.search(r"(\d{4})\s*$", release or "") or _YEAR.search(title or "")
    return int(m.group(1)) if m else None


def _movie_description(title: str, genres: list[str], year: int | None) -> str:
    parts = [title.strip()]
    if genres:
        parts.append("Genres: " + ", ".join(genres))
    if year:
        parts.append(f"Year: {year}")
    return ". ".join(parts) + "."


# ---------------------------------------------------------------------- MovieLens 100K


def load_movielens_100k(path: str | Path) -> Dataset:
    """The unpacked ``ml-100k`` folder: u.data ratings, u.item movies (genres), u.user users."""
    root = _require_dir(Path(path), "MovieLens 100K folder")
    data = _read_delimited(
        _require_file(root / "u.data", "ratings file"), "\t", ["user_id", "item_id", "value", "timestamp"]
    )
    value = _numeric(data["value"], root / "u.data", "rating", 1)
    ts = _numeric(data["timestamp"], root / "u.data", "timestamp", 1).astype("int64")
    events = pd.DataFrame(
        {
            "user_id": data["user_id"],
            "item_id": data["item_id"],
            "event_type": "rating",
            "value": value,
            "timestamp": ts,
        }
    )

    genres = ML100K_GENRES
    if (root / "u.genre").exists():
        g = _read_delimited(root / "u.genre", "|", ["name", "index"], encoding="latin-1")
        g = g[g["name"] != ""]
        genres = list(g.sort_values("index", key=lambda s: s.astype(int))["name"])
    item_cols = ["item_id", "title", "release_date", "video_release_date", "imdb_url"] + [
        f"g{i}" for i in range(len(genres))
    ]
    raw = _read_delimited(_require(root / "u.item", "items file"), "|", item_cols, encoding="latin-1")
    flags = raw[[f"g{i}" for i in range(len(genres))]].to_numpy() == "1"
    items = _movie_items(raw, [[genres[j] for j in np.flatnonzero(row)] for row in flags])

    users = None
    if (root / "u.user").exists():
        u = _read_delimited(root / "u.user", "|", ["user_id", "age", "gender", "occupation", "zip"], encoding="latin-1")
        age = _numeric(u["age"], root / "u.user", "age", 1).astype(int)
        users = pd.DataFrame(
            {
                "user_id": u["user_id"],
                "attributes": [
                    {"age": int(a), "gender": g, "occupation": o, "zip": z}
                    for a, g, o, z in zip(age, u["gender"], u["occupation"], u["zip"])
                ],
            }
        )
    return _build(
        root,
        "movielens-100k",
        events,
        items,
        users,
        where={"events": _text_file_where(root / "u.data", header=False, sep="\t")},
    )


def _movie_items(raw: pd.DataFrame, categories: list[list[str]]) -> pd.DataFrame:
    release = raw["release_date"] if "release_date" in raw else pd.Series([""] * len(raw))
    years = [_year(r, t) for r, t in zip(release, raw["title"])]
    attrs = []
    for i, y in enumerate(years):
        a: dict[str, Any] = {"year": y} if y else {}
        if "release_date" in raw and raw["release_date"].iloc[i]:
            a["release_date"] = raw["release_date"].iloc[i]
        if "imdb_url" in raw and raw["imdb_url"].iloc[i]:
            a["imdb_url"] = raw["imdb_url"].iloc[i]
        attrs.append(a)
    return pd.DataFrame(
        {
            "item_id": raw["item_id"],
            "title": raw["title"],
            "description": [_movie_description(t, c, y) for t, c, y in zip(raw["title"], categories, years)],
            "categories": categories,
            "attributes": attrs,
            "available": True,
        }
    )


# ---------------------------------------------------------------------- MovieLens 1M


def _read_double_colon(path: Path, names: list[str]) -> pd.DataFrame:
    """``a::b::c`` lines; the last field may itself contain ``::``-free colons (titles do)."""
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("::")
        if len(fields) != len(names):
            raise DatasetError(f"{path} line {lineno}: expected {len(names)} '::'-separated fields, got {len(fields)}")
        rows.append(fields)
    return pd.DataFrame(rows, columns=names, dtype=str) if rows else pd.DataFrame(columns=names, dtype=str)


def load_movielens_1m(path: str | Path) -> Dataset:
    """The unpacked ``ml-1m`` folder: ratings.dat, movies.dat, users.dat (``::``-separated, latin-1)."""
    root = _require_dir(Path(path), "MovieLens 1M folder")
    ratings_path = _require_file(root / "ratings.dat", "ratings file")
    # 1M lines: split on ':' with the C parser and keep every other field (the '::' gaps are empty).
    r = _read_delimited(
        ratings_path, ":", ["user_id", "_a", "item_id", "_b", "value", "_c", "timestamp"], encoding="latin-1"
    )
    if r[["_a", "_b", "_c"]].ne("").any().any() or (r["timestamp"] == "").any():
        bad = int(np.flatnonzero((r[["_a", "_b", "_c"]].ne("").any(axis=1) | r["timestamp"].eq("")).to_numpy())[0])
        raise DatasetError(f"{ratings_path} line {bad + 1}: expected UserID::MovieID::Rating::Timestamp")
    events = pd.DataFrame(
        {
            "user_id": r["user_id"],
            "item_id": r["item_id"],
            "event_type": "rating",
            "value": _numeric(r["value"], ratings_path, "rating", 1),
            "timestamp": _numeric(r["timestamp"], ratings_path, "timestamp", 1).astype("int64"),
        }
    )
    items = None
    if (root / "movies.dat").exists():
        m = _read_double_colon(root / "movies.dat", ["item_id", "title", "genres"])
        cats = [[g for g in s.split("|") if g] for s in m["genres"]]
        items = _movie_items(m[["item_id", "title"]], cats)
    users = None
    if (root / "users.dat").exists():
        u = _read_double_colon(root / "users.dat", ["user_id", "gender", "age", "occupation", "zip"])
        occ = _numeric(u["occupation"], root / "users.dat", "occupation", 1).astype(int)
        age = _numeric(u["age"], root / "users.dat", "age", 1).astype(int)
        users = pd.DataFrame(
            {
                "user_id": u["user_id"],
                "attributes": [
                    {
                        "gender": g,
                        "age": int(a),  # ml-1m age is a bucket's lower bound (1, 18, 25, ...)
                        "occupation": ML1M_OCCUPATIONS[o] if 0 <= o < len(ML1M_OCCUPATIONS) else str(o),
                        "zip": z,
                    }
                    for g, a, o, z in zip(u["gender"], age, occ, u["zip"])
                ],
            }
        )
    return _build(
        root,
        "movielens-1m",
        events,
        items,
        users,
        where={"events": _text_file_where(ratings_path, header=False, sep=":", encoding="latin-1")},
    )


# ---------------------------------------------------------------------- goodbooks-10k


def load_goodbooks_10k(path: str | Path, *, max_tags: int = 5) -> Dataset:
    """goodbooks-10k: ratings.csv, books.csv, and book_tags.csv + tags.csv for categories.

    Ratings carry no time; they get epoch 0 plus their row number in seconds, which keeps the
    file's order for time-based splits and makes ids deterministic.
    """
    root = _require_dir(Path(path), "goodbooks-10k folder")
    ratings_path = _require_file(root / "ratings.csv", "ratings file")
    r = _read_csv(ratings_path)
    _require_columns(r, ["user_id", "book_id", "rating"], ratings_path)
    events = pd.DataFrame(
        {
            "user_id": r["user_id"],
            "item_id": r["book_id"],
            "event_type": "rating",
            "value": _numeric(r["rating"], ratings_path, "rating", 2),
            "timestamp": np.arange(len(r), dtype=np.int64),
        }
    )
    items = None
    books_path = root / "books.csv"
    if books_path.exists():
        b = _read_csv(books_path)
        _require_columns(b, ["book_id", "title"], books_path)
        tags_by_book: dict[str, list[str]] = {}
        if (root / "book_tags.csv").exists() and (root / "tags.csv").exists() and "goodreads_book_id" in b:
            tags_by_book = _top_tags(root, b, max_tags)
        authors = b["authors"] if "authors" in b else pd.Series([""] * len(b))
        year = b["original_publication_year"] if "original_publication_year" in b else pd.Series([""] * len(b))
        rows = []
        for i in range(len(b)):
            bid, title, auth = b["book_id"].iloc[i], b["title"].iloc[i], authors.iloc[i]
            y = pd.to_numeric(year.iloc[i], errors="coerce")
            cats = tags_by_book.get(bid, [])
            attrs: dict[str, Any] = {}
            if auth:
                attrs["authors"] = [a.strip() for a in auth.split(",") if a.strip()]
            if pd.notna(y):
                attrs["year"] = int(y)
            for col in ("goodreads_book_id", "isbn", "language_code", "average_rating"):
                if col in b and b[col].iloc[i]:
                    attrs[col] = b[col].iloc[i]
            desc = [title]
            if auth:
                desc.append(f"by {auth}")
            if cats:
                desc.append("Tags: " + ", ".join(cats))
            if pd.notna(y):
                desc.append(f"Year: {int(y)}")
            rows.append(
                {
                    "item_id": bid,
                    "title": title,
                    "description": ". ".join(desc) + ".",
                    "categories": cats,
                    "attributes": attrs,
                    "available": True,
                }
            )
        items = pd.DataFrame(rows)
    return _build(
        root,
        "goodbooks-10k",
        events,
        items,
        where={"events": _text_file_where(ratings_path, header=True)},
        columns={("events", "item_id"): "book_id"},
    )


def _top_tags(root: Path, books: pd.DataFrame, max_tags: int) -> dict[str, list[str]]:
    bt = _read_csv(root / "book_tags.csv")
    tags = _read_csv(root / "tags.csv")
    _require_columns(bt, ["goodreads_book_id", "tag_id", "count"], root / "book_tags.csv")
    _require_columns(tags, ["tag_id", "tag_name"], root / "tags.csv")
    bt["count"] = _numeric(bt["count"], root / "book_tags.csv", "count", 2)
    bt = bt.merge(tags, on="tag_id", how="inner")
    bt = bt[~bt["tag_name"].str.lower().isin(GOODBOOKS_SHELF_TAGS)]
    bt = bt.merge(books[["goodreads_book_id", "book_id"]], on="goodreads_book_id", how="inner")
    bt = bt.sort_values(["book_id", "count", "tag_name"], ascending=[True, False, True], kind="stable")
    top = bt.groupby("book_id", sort=False).head(max_tags)
    return top.groupby("book_id", sort=False)["tag_name"].agg(list).to_dict()


# ---------------------------------------------------------------------- generic tables


def _read_csv(path: Path) -> pd.DataFrame:
    """CSV with a header, all columns as str; a malformed line raises DatasetError naming it."""
    _require_file(path, "file")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, engine="c")
    except pd.errors.EmptyDataError as exc:
        raise DatasetError(f"{path} is empty") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        # pandas says "Expected 3 fields in line 5, saw 4": line numbers count the header.
        raise DatasetError(f"malformed CSV {path}: {exc}") from exc


def _require_columns(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path} is missing required column(s) {missing}; it has {list(frame.columns)}")


def load_table(
    path: str | Path,
    fmt: str = "csv",
    mapping: dict[str, str] | None = None,
    items_path: str | Path | None = None,
) -> Dataset:
    """A generic events file (``fmt`` "csv" or "parquet").

    ``mapping`` renames the file's columns to ours: ``{our_name: their_name}``, e.g.
    ``{"user_id": "customer", "item_id": "sku", "timestamp": "time"}``. Required: user_id and
    item_id; optional: event_id, event_type, value, timestamp (epoch seconds or a date string).
    Without a timestamp column the events are at the file's modification time
    (:func:`~recsys.datasets.base.source_time`). ``items_path`` (same format) holds item_id, title, description, categories ('|'-separated
    in CSV) and available; any other columns become the item's attributes.
    """
    if fmt not in ("csv", "parquet"):
        raise DatasetError(f"unknown table format {fmt!r}: expected 'csv' or 'parquet'")
    path = _require_file(Path(path), "events file")
    mapping = dict(mapping or {})
    unknown = set(mapping) - set(EVENT_FIELDS)
    if unknown:
        raise DatasetError(f"mapping names unknown field(s) {sorted(unknown)}; known: {EVENT_FIELDS}")
    raw = _read_csv(path) if fmt == "csv" else _read_parquet(path)
    where = _text_file_where(path, header=True) if fmt == "csv" else _parquet_where(path)
    source = {ours: mapping.get(ours, ours) for ours in EVENT_FIELDS}
    missing = [
        f"{ours} (column {theirs!r})"
        for ours, theirs in source.items()
        if ours in ("user_id", "item_id") and theirs not in raw.columns
    ]
    if missing:
        raise DatasetError(f"{path} is missing required column(s): {', '.join(missing)}; it has {list(raw.columns)}")
    # ids and labels stay as read (checked, then converted, by the Dataset normalization)
    events = pd.DataFrame({"user_id": raw[source["user_id"]], "item_id": raw[source["item_id"]]})
    if source["event_type"] in raw:
        events["event_type"] = raw[source["event_type"]]
    if source["value"] in raw:
        events["value"] = _checked_numbers(raw[source["value"]], "value", where)
    if source["timestamp"] in raw:
        events["timestamp"] = _checked_times(raw[source["timestamp"]], where)
    else:
        events["timestamp"] = source_time(path)
    if source["event_id"] in raw:
        events["event_id"] = raw[source["event_id"]]
    locate = {"events": where}
    items = None
    if items_path is not None:
        items_path = _require_file(Path(items_path), "items file")
        items = _load_items_table(items_path, fmt, source["item_id"])
        locate["items"] = _text_file_where(items_path, header=True) if fmt == "csv" else _parquet_where(items_path)
    columns = {("events", ours): f"{ours} (column {theirs!r})" for ours, theirs in source.items() if ours != theirs}
    return _build(path, path.stem, events, items, where=locate, columns=columns)


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DatasetError(f"cannot read parquet {path}: {exc}") from exc


def _checked_numbers(col: pd.Series, name: str, where: Where) -> pd.Series:
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        out = col.astype("float64")
    else:
        out = pd.to_numeric(col.astype(str).str.strip(), errors="coerce")
    bad = np.flatnonzero(out.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise DatasetError(f"{where(i)}: {name} is not a number: {_shown(col.iloc[i])}")
    return out.astype("float64")


# datetime64[ns] holds about ±292 years around 1970: epoch seconds beyond this are not times
_MAX_EPOCH_SECONDS = 9.2e9


def _checked_times(col: pd.Series, where: Where) -> pd.Series:
    """Times from datetimes, epoch seconds or date strings (each value on its own: a column may
    mix them); the first value that is none of these is reported with its own text."""
    col = col.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(col):
        out = pd.to_datetime(col, utc=True)
    elif pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        out = _epoch_seconds(col.astype("float64"))
    else:
        text = pd.Series(
            [v.strip() if isinstance(v, str) else ("" if _blank(v) else str(v)) for v in col], dtype=object
        )
        as_num = pd.to_numeric(text, errors="coerce")
        out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
        is_num = as_num.notna().to_numpy()
        if is_num.any():
            out[is_num] = _epoch_seconds(as_num[is_num])
        is_text = ~is_num & (text != "").to_numpy()
        if is_text.any():
            out[is_text] = _date_strings(text[is_text])
    bad = np.flatnonzero(out.isna().to_numpy())
    if len(bad):
        i = int(bad[0])
        raise DatasetError(
            f"{where(i)}: timestamp {_shown(col.iloc[i])} is not a time "
            "(expected epoch seconds or a date such as 2024-01-31T12:00:00Z)"
        )
    return out


def _epoch_seconds(seconds: pd.Series) -> pd.Series:
    ok = np.isfinite(seconds.to_numpy()) & (np.abs(seconds.to_numpy()) < _MAX_EPOCH_SECONDS)
    out = pd.Series(pd.NaT, index=seconds.index, dtype="datetime64[ns, UTC]")
    if ok.any():
        out[ok] = pd.to_datetime(seconds[ok], unit="s", utc=True).astype("datetime64[ns, UTC]")
    return out


def _date_strings(text: pd.Series) -> pd.Series:
    try:
        parsed = pd.to_datetime(text, utc=True, errors="coerce", format="mixed")
    except (ValueError, TypeError, OverflowError):  # out-of-range dates can escape errors="coerce"
        parsed = pd.Series([_one_date(v) for v in text], index=text.index, dtype="datetime64[ns, UTC]")
    return parsed.astype("datetime64[ns, UTC]")


def _one_date(value: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
        return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    except (ValueError, TypeError, OverflowError):
        return pd.NaT


def _shown(value: Any) -> str:
    """A cell as the user wrote it: 'abc', 1e+20, or 'empty'."""
    if isinstance(value, np.generic):
        value = value.item()
    if _blank(value) or value is pd.NaT:
        return "(empty)"
    return repr(value)


def _load_items_table(path: Path, fmt: str, item_col: str) -> pd.DataFrame:
    raw = _read_csv(path) if fmt == "csv" else _read_parquet(path)
    id_col = "item_id" if "item_id" in raw else item_col
    _require_columns(raw, [id_col], path)
    known = {id_col, "title", "description", "categories", "available"}
    extra = [c for c in raw.columns if c not in known]
    items = pd.DataFrame({"item_id": raw[id_col]})
    for col in ("title", "description"):
        if col in raw:
            items[col] = raw[col].fillna("").astype(str)
    if "categories" in raw:
        items["categories"] = [
            list(v) if isinstance(v, (list, tuple, np.ndarray)) else [c for c in str(v).split("|") if c]
            for v in raw["categories"].fillna("")
        ]
    if "available" in raw:
        items["available"] = (
            raw["available"]
            .map(lambda v: v if isinstance(v, (bool, np.bool_)) else str(v).strip().lower() not in ("0", "false", "no"))
            .astype(bool)
        )
    items["attributes"] = (
        [
            {c: (v.item() if isinstance(v, np.generic) else v) for c, v in zip(extra, row) if not _blank(v)}
            for row in raw[extra].itertuples(index=False, name=None)
        ]
        if extra
        else [{} for _ in range(len(raw))]
    )
    return items


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v == "") or (isinstance(v, float) and np.isnan(v))


# ---------------------------------------------------------------------- dispatch

LOADERS: dict[str, Callable[..., Dataset]] = {
    "movielens-100k": load_movielens_100k,
    "movielens-1m": load_movielens_1m,
    "goodbooks-10k": load_goodbooks_10k,
    "csv": lambda path, **kw: load_table(path, "csv", **kw),
    "parquet": lambda path, **kw: load_table(path, "parquet", **kw),
}


def load_dataset(fmt: str, path: str | Path, **kw: Any) -> Dataset:
    """Load ``path`` with the loader for the CLI format name ``fmt`` (see :data:`LOADERS`)."""
    loader = LOADERS.get(fmt)
    if loader is None:
        raise DatasetError(f"unknown dataset format {fmt!r}; known formats: {', '.join(LOADERS)}")
    return loader(path, **kw)
