"""Impression logging off the request path: a bounded queue and one writer thread per worker.

A route hands its :class:`~feature_store.impressions.Impression` to :meth:`ImpressionLog.record`,
which only puts it on a bounded queue (``put_nowait``): when the queue is full the impression
is dropped and counted (``recsys_impressions_total{result="dropped"}``), so a slow or stalled
store never blocks a request. The writer thread takes what is queued — up to
``RECSYS_IMPRESSION_BATCH`` at a time, at least every ``RECSYS_IMPRESSION_FLUSH_SECONDS`` — and
stores it with one ``FeatureStore.add_impressions`` transaction. A batch the store refuses is
logged and counted as ``failed``; the next batch is tried as usual.

What a crash loses: the impressions still queued and the batch being written — at most one flush
interval of traffic plus one batch (docs/online-evaluation.md). A clean shutdown flushes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from api import metrics
from feature_store import FeatureStore
from feature_store.impressions import Impression

logger = logging.getLogger(__name__)


class ImpressionLog:
    """Batched, bounded, never-blocking impression writer (see the module docstring)."""

    def __init__(self, store: FeatureStore, *, queue_size: int, batch_size: int, flush_seconds: float) -> None:
        self.store = store
        self.batch_size = int(batch_size)
        self.flush_seconds = float(flush_seconds)
        self._queue: queue.Queue[Impression] = queue.Queue(maxsize=int(queue_size))
        self._stop = threading.Event()
        self._write_lock = threading.Lock()  # one batch in flight: the thread's or a flush()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0
        self.failed = 0

    def record(self, impression: Impression) -> bool:
        """Queue one impression; False (dropped and counted) when the queue is full. Never blocks."""
        try:
            self._queue.put_nowait(impression)
        except queue.Full:
            self.dropped += 1
            metrics.IMPRESSIONS.labels(result="dropped").inc()
            return False
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="impression-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the writer and store what is still queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    def flush(self) -> int:
        """Store everything queued now, and wait for the batch the writer thread took before this
        call (blocking: call off the event loop); returns how many this call stored."""
        done = 0
        while self._queue.qsize():
            done += self._write_batch()
        # an empty queue is not a stored one: the thread may hold a batch it took but has not
        # written yet (each taken impression is marked done once its batch is stored or failed)
        self._queue.join()
        return done

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self._write_batch(wait=self.flush_seconds)
            if self._queue.qsize() < self.batch_size:
                # a part batch: wait out the rest of the interval so batches stay large
                self._stop.wait(max(0.0, self.flush_seconds - (time.monotonic() - started)))

    def _write_batch(self, wait: float = 0.0) -> int:
        batch: list[Impression] = []
        try:
            batch.append(self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait())
        except queue.Empty:
            return 0
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        try:
            with self._write_lock:
                self.store.add_impressions(batch)
        except Exception:
            self.failed += len(batch)
            metrics.IMPRESSIONS.labels(result="failed").inc(len(batch))
            logger.exception("could not store %d impressions", len(batch))
            return 0
        finally:
            for _ in batch:
                self._queue.task_done()
        self.written += len(batch)
        metrics.IMPRESSIONS.labels(result="logged").inc(len(batch))
        return len(batch)
