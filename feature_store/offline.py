"""The offline half of the feature store: an append-only Parquet event log.

Layout under the store's root (any filesystem ``pyarrow.fs.FileSystem.from_uri`` opens: a local
folder, ``file:///…``, ``s3://bucket/prefix``, ``gs://…``, ``hdfs://…``)::

    events/date=YYYY-MM-DD/part-<lo>-<hi>.parquet     rows of export batch (lo, hi], that date
    events/date=YYYY-MM-DD/compact-<lo>-<hi>.parquet  merged by compaction
    _log/intent-<lo>.json      the batch (lo, hi] an export is writing (fixes hi for a re-run)
    _log/batch-<lo>.json       commit marker of batch (lo, hi]: its files, rows, time range
    _log/checkpoint-<hi>.json  compaction: the complete live file list up to sequence hi
    _log/source.json           which SQL store this log belongs to (its store id, see bind_source)

``lo``/``hi`` are positions on the SQL store's monotone event sequence (``events.id``): a batch
holds exactly the events with ``lo < id <= hi``. The committed log is the newest checkpoint plus
the chain of batch markers that starts at its ``hi`` (batch ``lo`` = previous ``hi``); the end of
the chain is the export watermark. A data file is visible only once a marker names it, and
every marker is written last and whole (temporary file + rename locally; one PUT on object
stores), so a crash at any point leaves either the old log or the new one: files of an
uncommitted batch are never read, and the re-run rewrites the same names (its intent fixes
``hi``). Two exporters racing on the same ``lo`` write the same marker name; the last one
wins whole, and the chain still covers every sequence number once.

Rows are never rewritten logically: compaction only merges files of one date into one, then
switches to the merged files with one checkpoint. Readers that lose a race with the clean-up
of superseded files re-resolve the log and read again.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

#: Column layout of every log file. ``seq`` is the SQL store's ``events.id``; ``event_id`` the
#: idempotency key (kept: pipeline validation and experiment split hashes use it). The string
#: ids make the log readable on its own (Spark, DuckDB); ``user_pk``/``item_pk`` are the
#: store's surrogate keys, which never change: the snapshot reads those integers and takes the
#: strings once per user/item from the catalog — date files each carry their own dictionary
#: of string ids, so reading those costs as much as plain strings.
EVENT_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("user_pk", pa.int64()),
        ("item_pk", pa.int64()),
        ("event_type", pa.string()),
        ("value", pa.float64()),
        ("ts", pa.timestamp("ms", tz="UTC")),
    ]
)
_DAY_MS = 86_400_000
_LOG = "_log"
_READ_RETRIES = 5
_SOURCE = "source.json"


@dataclass(frozen=True)
class LogKind:
    """What one log holds: its data folder, the column layout of its files (every one has an
    int64 ``seq`` — the SQL table's id — and a ``ts`` timestamp) and the string columns read
    back dictionary-encoded."""

    folder: str
    schema: pa.Schema
    dictionary_columns: tuple[str, ...]


EVENTS_LOG = LogKind("events", EVENT_SCHEMA, ("user_id", "item_id", "event_type"))

#: Column layout of the impressions log (feature_store/impressions.py): ``seq`` is
#: ``impressions.id``; the shown items in order, with their propensities and, when interleaved,
#: the version that contributed each position.
IMPRESSION_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("request_id", pa.string()),
        ("user_id", pa.string()),
        ("surface", pa.string()),
        ("model_version", pa.string()),
        ("variant", pa.string()),
        ("items", pa.list_(pa.string())),
        ("propensities", pa.list_(pa.float64())),
        ("sources", pa.list_(pa.string())),
        ("ts", pa.timestamp("ms", tz="UTC")),
    ]
)
IMPRESSIONS_LOG = LogKind("impressions", IMPRESSION_SCHEMA, ("user_id", "surface", "model_version", "variant"))


def impressions_log_uri(uri: str) -> str:
    """Where the impressions log of the offline store at ``uri`` lives (its own markers)."""
    return posixpath.join(str(uri).rstrip("/"), "impressions")


class OfflineStoreError(RuntimeError):
    """The log cannot be used as asked (belongs to another store, unreadable marker, ...)."""


class StoreMismatch(OfflineStoreError, ValueError):
    """The log was exported from another store than the one reading it (one line for the user)."""


@dataclass(frozen=True)
class LogFile:
    """One committed data file: path relative to the root, its row count and time range (ms)."""

    path: str
    rows: int
    min_ts: int
    max_ts: int

    def as_dict(self) -> dict:
        return {"path": self.path, "rows": self.rows, "min_ts": self.min_ts, "max_ts": self.max_ts}


@dataclass(frozen=True)
class LogState:
    """The committed log: live files (disjoint, every sequence number ≤ watermark once)."""

    watermark: int
    files: tuple[LogFile, ...]
    checkpoint: int = 0
    batch_markers: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


@dataclass(frozen=True)
class ExportResult:
    events: int
    batches: int
    seconds: float
    watermark: int
    #: impressions exported to the impressions log alongside (FeatureStore.export_offline)
    impressions: int = 0

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class CompactResult:
    files_before: int
    files_after: int
    rows: int
    seconds: float
    removed: list[str] = field(default_factory=list)


class OfflineStore:
    """The Parquet event log at ``uri`` (a local path or any URI pyarrow's filesystems open);
    ``kind``: the impressions log has the same layout and commit protocol over its own rows."""

    def __init__(self, uri: str, kind: LogKind = EVENTS_LOG):
        self.uri = str(uri)
        self.kind = kind
        if "://" in self.uri:
            self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), self.uri
        self.root = self.root.rstrip("/") or "/"
        self._local = isinstance(self.fs, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"OfflineStore({self.uri!r})"

    # ------------------------------------------------------------------ paths and small files

    def _path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def _write_bytes(self, rel: str, data: bytes) -> None:
        """Whole or not at all: temp file + rename locally; object stores publish a PUT whole."""
        path = self._path(rel)
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        if not self._local:
            with self.fs.open_output_stream(path) as out:
                out.write(data)
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, path)

    def _write_json(self, rel: str, obj: dict) -> None:
        self._write_bytes(rel, json.dumps(obj, sort_keys=True).encode())

    def _read_json(self, rel: str) -> dict:
        with self.fs.open_input_stream(self._path(rel)) as f:
            return json.loads(f.read())

    def _write_table(self, rel: str, table: pa.Table) -> None:
        path = self._path(rel)
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        if not self._local:
            pq.write_table(table, path, filesystem=self.fs)
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        pq.write_table(table, tmp, filesystem=self.fs)
        self.fs.move(tmp, path)

    def _delete(self, rel: str) -> None:
        try:
            self.fs.delete_file(self._path(rel))
        except FileNotFoundError:
            pass

    def _log_names(self) -> list[str]:
        sel = pafs.FileSelector(self._path(_LOG), allow_not_found=True)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(sel) if i.type == pafs.FileType.File)

    # ------------------------------------------------------------------ source binding

    def bind_source(self, store_id: str, source: str) -> None:
        """Tie the log to one SQL store by the id it wrote at creation; refuse another store's log.

        Watermarks are positions on one database's sequence: exporting a second database (or
        the same URL recreated) into the same log would skip or repeat events and re-attribute
        them by surrogate key. ``source`` (the URL without password) is kept for messages
        only: a copied data folder (same store, new path) stays bound. A log written before
        stores had ids is adopted by the store at the URL it names.
        """
        rel = posixpath.join(_LOG, _SOURCE)
        try:
            known = self._read_json(rel)
        except FileNotFoundError:
            self._write_json(rel, {"store_id": store_id, "source": source, "created_at": datetime.now(UTC).isoformat()})
            return
        known_id = known.get("store_id")
        if known_id is None and known.get("source") == source:
            self._write_json(rel, {**known, "store_id": store_id})
            return
        if known_id != store_id:
            raise StoreMismatch(
                f"offline log {self.uri} was exported from store {known_id or 'unknown'} "
                f"({known.get('source')}), not from store {store_id} ({source}): "
                "rebuild it from this store with `recsys store export --rebuild`"
            )

    def rebuild(self, store_id: str, source: str) -> None:
        """Drop the whole log (data files and markers) and bind it to ``store_id``: the next
        export writes every event of that store again."""
        for rel in (self.kind.folder, _LOG):
            try:
                self.fs.delete_dir(self._path(rel))
            except FileNotFoundError:
                pass
        logger.warning("offline log %s emptied: it is rebuilt from store %s (%s)", self.uri, store_id, source)
        self.bind_source(store_id, source)

    # ------------------------------------------------------------------ committed state

    def state(self) -> LogState:
        """Resolve the committed log (newest checkpoint + its chain of batch markers)."""
        for attempt in range(_READ_RETRIES):
            try:
                return self._resolve()
            except FileNotFoundError:  # a marker removed by a concurrent compaction: resolve again
                if attempt == _READ_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _resolve(self) -> LogState:
        names = self._log_names()
        checkpoints = sorted(n for n in names if n.startswith("checkpoint-") and n.endswith(".json"))
        files: list[LogFile] = []
        watermark = 0
        if checkpoints:
            cp = self._read_json(posixpath.join(_LOG, checkpoints[-1]))
            watermark = int(cp["hi"])
            files = [LogFile(**f) for f in cp["files"]]
        batches = {int(n[6:-5]): n for n in names if n.startswith("batch-") and n.endswith(".json")}
        chain = []
        checkpoint = watermark
        while watermark in batches:
            marker = self._read_json(posixpath.join(_LOG, batches[watermark]))
            if int(marker["lo"]) != watermark or int(marker["hi"]) <= watermark:
                raise OfflineStoreError(f"corrupt batch marker {batches[watermark]}: {marker}")
            files.extend(LogFile(**f) for f in marker["files"])
            chain.append(batches[watermark])
            watermark = int(marker["hi"])
        if not checkpoints and not chain and self._has_files_past_first_batch():
            # A directory listing is not a snapshot: one taken while a compaction renamed its new
            # checkpoint in and deleted the old one can miss both. Files that only a committed
            # first batch lets exist, with no way into them, are that race: resolve again.
            raise FileNotFoundError(f"{self.uri}: neither a checkpoint nor the first batch marker was listed")
        return LogState(watermark=watermark, files=tuple(files), checkpoint=checkpoint, batch_markers=tuple(chain))

    def _has_files_past_first_batch(self) -> bool:
        """Compacted files, or files of a batch after the first (an interrupted first export
        leaves only ``part-0-…`` files, which stay invisible until its re-run commits)."""
        sel = pafs.FileSelector(self._path(self.kind.folder), recursive=True, allow_not_found=True)
        for info in self.fs.get_file_info(sel):
            name = posixpath.basename(info.path)
            if info.type == pafs.FileType.File and name.endswith(".parquet"):
                if name.startswith("compact-") or _seq_range_of(name)[0] > 0:
                    return True
        return False

    @property
    def watermark(self) -> int:
        return self.state().watermark

    # ------------------------------------------------------------------ writing batches

    def pending_batch(self, lo: int) -> int | None:
        """``hi`` of an uncommitted batch starting at ``lo`` whose export was interrupted."""
        try:
            return int(self._read_json(posixpath.join(_LOG, f"intent-{lo:020d}.json"))["hi"])
        except FileNotFoundError:
            return None

    def begin_batch(self, lo: int, hi: int) -> None:
        self._write_json(posixpath.join(_LOG, f"intent-{lo:020d}.json"), {"lo": lo, "hi": hi})

    def write_batch(
        self, lo: int, hi: int, table: pa.Table, *, after_file: Callable[[str], None] | None = None
    ) -> list[LogFile]:
        """Write batch (lo, hi] as one file per event date, then its commit marker.

        ``table`` holds exactly the events with ``lo < seq <= hi`` (any order), in
        :attr:`kind`'s schema. ``after_file`` is called after each data file (tests use it to
        crash half way).
        """
        table = table.select(self.kind.schema.names).cast(self.kind.schema)
        written = []
        for day, part in _split_by_day(table):
            rel = posixpath.join(self.kind.folder, f"date={day}", f"part-{lo:020d}-{hi:020d}.parquet")
            self._write_table(rel, part)
            written.append(_describe(rel, part))
            if after_file is not None:
                after_file(rel)
        marker = posixpath.join(_LOG, f"batch-{lo:020d}.json")
        if self.fs.get_file_info(self._path(marker)).type == pafs.FileType.File:
            # A concurrent exporter committed this batch first: keep its marker (same rows).
            logger.info("batch (%d, %d] already committed by another exporter", lo, hi)
            return written
        self._write_json(
            marker,
            {
                "lo": lo,
                "hi": hi,
                "rows": table.num_rows,
                "files": [f.as_dict() for f in written],
                "committed_at": datetime.now(UTC).isoformat(),
            },
        )
        self._delete(posixpath.join(_LOG, f"intent-{lo:020d}.json"))
        return written

    # ------------------------------------------------------------------ reading

    def read_table(self, cutoff_ms: int | None = None, columns: list[str] | None = None) -> pa.Table:
        """Committed events with ``ts <= cutoff_ms`` (all when None), ordered by (ts, seq).

        ``user_id``, ``item_id`` and ``event_type`` come back dictionary-encoded (one unified
        dictionary each), so pandas gets Categorical columns without touching a string per row.
        """
        columns = list(columns or self.kind.schema.names)
        for attempt in range(_READ_RETRIES):
            state = self.state()
            try:
                return self._read_files(state.files, cutoff_ms, columns)
            except FileNotFoundError:  # compacted away after we resolved the log: resolve again
                if attempt == _READ_RETRIES - 1:
                    raise
                logger.info("offline read raced a compaction; re-resolving the log")
        raise AssertionError("unreachable")

    def _read_files(self, files: tuple[LogFile, ...], cutoff_ms: int | None, columns: list[str]) -> pa.Table:
        need = [c for c in dict.fromkeys([*columns, "ts", "seq"])]
        # Time pruning from the markers: skip files entirely after the cutoff; filter only the
        # files that straddle it. Files in (date, first seq) order: rows then come out sorted
        # by (date, seq), so one stable sort by ts yields (ts, seq).
        chosen = sorted((f for f in files if cutoff_ms is None or f.min_ts <= cutoff_ms), key=_file_order)
        straddle = cutoff_ms is not None and any(f.max_ts > cutoff_ms for f in chosen)
        dictionary = self.kind.dictionary_columns
        fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=set(dictionary)))
        schema = pa.schema(
            [
                pa.field(n, pa.dictionary(pa.int32(), pa.string())) if n in dictionary else self.kind.schema.field(n)
                for n in self.kind.schema.names
            ]
        )
        if not chosen:
            return schema.empty_table().select(columns)
        dataset = ds.dataset([self._path(f.path) for f in chosen], schema=schema, format=fmt, filesystem=self.fs)
        flt = (ds.field("ts") <= pa.scalar(cutoff_ms, pa.timestamp("ms", tz="UTC"))) if straddle else None
        table = dataset.to_table(columns=need, filter=flt)  # keeps file order
        ts = table.column("ts").cast(pa.int64()).to_numpy()
        if len(ts) > 1 and (np.diff(ts) < 0).any():
            table = table.take(pa.array(np.argsort(ts, kind="stable")))
        table = table.unify_dictionaries() if any(c in dictionary for c in need) else table
        return table.select(columns)

    def read_events(
        self, cutoff_ms: int | None = None, *, users: pd.Series | None = None, items: pd.Series | None = None
    ) -> pd.DataFrame:
        """Events in the Dataset column contract: ``user_id``/``item_id`` as pandas Categorical
        (string categories), ``event_type``/``event_id`` as str, ``timestamp`` datetime64[ns, UTC].

        ``users``/``items``: the catalog's string ids indexed by surrogate key (what the SQL
        store holds). Given, ids are decoded from the integer key columns (fast); otherwise
        from the log's own string columns.
        """
        by_key = users is not None and items is not None
        ids = ["user_pk", "item_pk"] if by_key else ["user_id", "item_id"]
        table = self.read_table(cutoff_ms, ["event_id", *ids, "event_type", "value", "ts"])
        if by_key and (table.column("user_pk").null_count or table.column("item_pk").null_count):
            # Files written before the key columns existed: decode their string ids instead.
            by_key = False
            table = self.read_table(cutoff_ms, ["event_id", "user_id", "item_id", "event_type", "value", "ts"])
        if by_key:
            user_col = _categorical_from_keys(table.column("user_pk"), users, "users")
            item_col = _categorical_from_keys(table.column("item_pk"), items, "items")
        else:
            user_col, item_col = _categorical(table.column("user_id")), _categorical(table.column("item_id"))
        return pd.DataFrame(
            {
                "event_id": pd.Series(table.column("event_id").to_pandas(), dtype="str"),
                "user_id": user_col,
                "item_id": item_col,
                "event_type": pd.Series(table.column("event_type").cast(pa.string()).to_pandas(), dtype="str"),
                "value": table.column("value").to_numpy(),
                "timestamp": table.column("ts").cast(pa.timestamp("ns", tz="UTC")).to_pandas(),
            }
        )

    # ------------------------------------------------------------------ compaction

    def compact(
        self, *, small_rows: int = 1_000_000, before_cleanup: Callable[[], None] | None = None
    ) -> CompactResult:
        """Merge the small files of each date partition into one; commit with a checkpoint.

        Order of work: merged files are written whole first (invisible: no marker names them),
        then one checkpoint lists the complete live file set up to the current watermark (the
        atomic switch), then superseded files and markers are deleted. A crash before the
        checkpoint leaves the old log; after it, only unreferenced files, removed next time.
        ``before_cleanup`` runs between the switch and the deletes (tests crash there).
        Run one compaction at a time; exports may run alongside.
        """
        start = time.perf_counter()
        state = self.state()
        by_day: dict[str, list[LogFile]] = {}
        for f in state.files:
            by_day.setdefault(_day_of(f.path), []).append(f)
        live: list[LogFile] = []
        superseded: list[str] = []
        for day, files in sorted(by_day.items()):
            small = sorted((f for f in files if f.rows < small_rows), key=_file_order)
            live.extend(f for f in files if f.rows >= small_rows)
            if len(small) < 2:
                live.extend(small)
                continue
            table = self._read_files(tuple(small), None, list(self.kind.schema.names))
            table = table.cast(self.kind.schema)  # plain strings again for the file
            lo, hi = _seq_range(small)
            rel = posixpath.join(self.kind.folder, f"date={day}", f"compact-{lo:020d}-{hi:020d}.parquet")
            self._write_table(rel, table)
            live.append(_describe(rel, table))
            superseded.extend(f.path for f in small)
        changed = bool(superseded)
        if changed or state.batch_markers:
            self._write_json(
                posixpath.join(_LOG, f"checkpoint-{state.watermark:020d}.json"),
                {
                    "hi": state.watermark,
                    "files": [f.as_dict() for f in live],
                    "rows": sum(f.rows for f in live),
                    "committed_at": datetime.now(UTC).isoformat(),
                },
            )
        if before_cleanup is not None:
            before_cleanup()
        removed = self._collect_garbage(state.watermark, {f.path for f in live})
        result = CompactResult(
            files_before=len(state.files),
            files_after=len(live),
            rows=sum(f.rows for f in live),
            seconds=time.perf_counter() - start,
            removed=removed,
        )
        logger.info(
            "compacted %s: %d files -> %d (%d rows) in %.2fs",
            self.uri,
            result.files_before,
            result.files_after,
            result.rows,
            result.seconds,
        )
        return result

    def _collect_garbage(self, checkpoint_hi: int, live_paths: set[str]) -> list[str]:
        """Delete markers folded into the checkpoint at ``checkpoint_hi`` and data files below it
        that the checkpoint does not name (superseded by compaction, or left by a crashed
        export or compaction). Files above it are never touched: an export may be writing them."""
        removed = []
        for name in self._log_names():
            if not name.endswith(".json"):  # a marker being written right now
                continue
            if (name.startswith("checkpoint-") and int(name[11:-5]) < checkpoint_hi) or (
                name.startswith(("batch-", "intent-")) and int(name.split("-")[1][:-5]) < checkpoint_hi
            ):
                self._delete(posixpath.join(_LOG, name))
        sel = pafs.FileSelector(self._path(self.kind.folder), recursive=True, allow_not_found=True)
        root = self.root.rstrip("/") + "/"
        for info in self.fs.get_file_info(sel):
            if info.type != pafs.FileType.File:
                continue
            rel = info.path.removeprefix(root)
            if rel in live_paths or not rel.endswith(".parquet"):
                continue
            if _seq_range_of(rel)[1] <= checkpoint_hi:
                self._delete(rel)
                removed.append(rel)
        return removed


# ---------------------------------------------------------------------- helpers


def _split_by_day(table: pa.Table):
    """(YYYY-MM-DD, rows of that UTC date sorted by (ts, seq)) for each date in ``table``."""
    if table.num_rows == 0:
        return
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    seq = table.column("seq").to_numpy()
    order = np.lexsort((seq, ts))
    table = table.take(pa.array(order))
    day = ts[order] // _DAY_MS
    bounds = np.flatnonzero(np.diff(day)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(day)]])
    for s, e in zip(starts, ends):
        yield pd.Timestamp(int(day[s]) * _DAY_MS, unit="ms").strftime("%Y-%m-%d"), table.slice(s, e - s)


def _describe(rel: str, table: pa.Table) -> LogFile:
    ts = table.column("ts").cast(pa.int64())
    return LogFile(path=rel, rows=table.num_rows, min_ts=int(pc.min(ts).as_py()), max_ts=int(pc.max(ts).as_py()))


def _day_of(rel: str) -> str:
    return rel.split("/")[1].removeprefix("date=")


def _seq_range_of(rel: str) -> tuple[int, int]:
    """(lo, hi) from a data file name ``part-<lo>-<hi>.parquet`` / ``compact-<lo>-<hi>.parquet``."""
    lo, hi = posixpath.basename(rel).split(".")[0].split("-")[1:3]
    return int(lo), int(hi)


def _seq_range(files: list[LogFile]) -> tuple[int, int]:
    ranges = [_seq_range_of(f.path) for f in files]
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def _file_order(f: LogFile) -> tuple[str, int]:
    return _day_of(f.path), int(posixpath.basename(f.path).split("-")[1])


def _categorical(column: pa.ChunkedArray) -> pd.Series:
    """A dictionary column as a Categorical with sorted categories (so the result does not
    depend on how rows happen to be spread over files)."""
    if column.num_chunks == 0:
        return pd.Series(pd.Categorical([], categories=pd.Index([], dtype="str")))
    chunk = column.combine_chunks() if column.num_chunks > 1 else column.chunk(0)
    dictionary = np.asarray(chunk.dictionary.to_pandas(), dtype=object)
    order = np.argsort(dictionary, kind="stable")
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    codes = rank[chunk.indices.to_numpy(zero_copy_only=False)]
    return pd.Series(pd.Categorical.from_codes(codes, categories=pd.Index(dictionary[order], dtype="str")))


def _categorical_from_keys(keys: pa.ChunkedArray, ids: pd.Series, what: str) -> pd.Series:
    """Surrogate keys -> Categorical over the catalog's ids (categories in key order; the
    matrix keeps only the ids that occur, sorted)."""
    pks = ids.index.to_numpy(dtype=np.int64)
    position = np.full(int(pks.max()) + 1 if len(pks) else 1, -1, dtype=np.int32)
    position[pks] = np.arange(len(pks), dtype=np.int32)
    k = keys.to_numpy()
    if len(k) and (k.max() >= len(position) or (position[k] < 0).any()):
        raise OfflineStoreError(f"the offline log references {what} the catalog does not have")
    return pd.Series(pd.Categorical.from_codes(position[k], categories=pd.Index(ids.to_numpy(), dtype="str")))


def cutoff_millis(as_of: datetime | pd.Timestamp | None) -> tuple[pd.Timestamp, int]:
    """(as_of as a UTC Timestamp, epoch ms) — naive times are taken as UTC; None means now."""
    ts = pd.Timestamp(as_of if as_of is not None else datetime.now(UTC))
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    ts = ts.tz_convert("UTC")
    # in the Timestamp's own unit: ``.value`` is nanoseconds, which overflow outside 1677-2262
    return ts, int(ts.as_unit("ms").asm8.view("i8"))


def default_offline_uri(database_url: str) -> str | None:
    """Where a FeatureStore on ``database_url`` keeps its offline log when not told.

    The service's own store (``RECSYS_DATABASE_URL``) uses ``RECSYS_OFFLINE_STORE_URI``; any
    other SQLite file keeps its log in an ``offline`` folder beside the file (the same place
    for the default layout); other databases get none unless one is passed.
    """
    from sqlalchemy.engine import make_url

    from recsys.settings import get_settings

    settings = get_settings()
    url = make_url(database_url)
    if url.render_as_string(hide_password=False) == make_url(settings.database_url).render_as_string(
        hide_password=False
    ):
        return settings.offline_store_uri
    db = url.database
    if url.get_backend_name() == "sqlite" and db and db != ":memory:" and not db.startswith("file:"):
        from pathlib import Path

        return str(Path(db).expanduser().resolve().parent / "offline")
    return None


__all__ = [
    "EVENTS_LOG",
    "EVENT_SCHEMA",
    "IMPRESSIONS_LOG",
    "IMPRESSION_SCHEMA",
    "LogKind",
    "CompactResult",
    "ExportResult",
    "LogFile",
    "LogState",
    "OfflineStore",
    "OfflineStoreError",
    "StoreMismatch",
    "cutoff_millis",
    "default_offline_uri",
    "impressions_log_uri",
]
