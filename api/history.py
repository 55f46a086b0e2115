"""Users' event histories in memory, kept current by the store's event feed.

A recommendation needs the user's history (what to exclude, what to fold in) and whether some
of it is newer than the served model. Reading it from the store on every request costs a SQL
round trip (a network one on PostgreSQL), so each worker keeps:

- an LRU of users' histories (``RECSYS_HISTORY_CACHE_USERS`` users at most), filled at start
  with the most recently active users and on a miss by one store read, which runs in a thread
  (:meth:`HistoryCache.load`, never on the event loop);
- the store's event feed (``events.id`` is the sequence number), polled every
  ``RECSYS_HISTORY_FEED_SECONDS`` by the worker's sync thread (api/serving.py) and right after
  ``POST /events`` commits, appends each new event to the history of a cached user. So an event
  stored through this worker counts from the next request on, one stored through another worker
  or replica within a poll interval.

Feed positions are ids handed out when a row is inserted, not when it commits: on PostgreSQL a
transaction can commit a lower id after a higher one is visible. An id skipped by the feed is
kept as a *gap* and asked for again on every poll until it shows up, or until
``GAP_SECONDS`` passed (ids consumed by a rolled-back insert or by ``ON CONFLICT DO NOTHING``
never show up). Every id at or below the *horizon* has been applied or never will be.

A miss read races with the feed: the read may or may not contain an event the feed applies while
it runs. The loaded history remembers the ids it read above the horizon, the feed keeps what it
applied in the last ``RECENT_SECONDS``, and the two are merged under one lock so that each
event counts exactly once.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime

from feature_store import FeatureStore
from feature_store.activity import StoredEvent, is_fresh, snapshot_cutoff

logger = logging.getLogger(__name__)

__all__ = ["HistoryCache", "UserHistory", "is_fresh", "snapshot_cutoff"]

#: how long an id the feed skipped is asked for again before it counts as never coming
GAP_SECONDS = 30.0
#: at most this many skipped ids are tracked (the oldest are given up first)
MAX_GAPS = 5_000
#: how long applied feed events are kept for miss reads that were in flight meanwhile
RECENT_SECONDS = 60.0
#: events read per feed query
FEED_BATCH = 10_000


@dataclass(slots=True)
class UserHistory:
    """One user's history: item ids in the order they reached this worker (a fold-in and the
    seen-items filter don't depend on the order), each event's value (the fold-in weighs items
    by their summed values, as the training matrix does), and when the newest event was stored."""

    items: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    newest: datetime | None = None
    #: feed ids read from the store above the horizon of that moment (see the module doc)
    loaded_seqs: set[int] | None = None

    def add(self, event: StoredEvent) -> None:
        self.items.append(sys.intern(event.item_id))
        self.values.append(event.value)
        if event.stored_at is not None and (self.newest is None or event.stored_at > self.newest):
            self.newest = event.stored_at


class HistoryCache:
    """Bounded LRU of users' histories plus the event feed that keeps them current.

    Thread-safe: the event loop reads (:meth:`get`), request threads load misses and poll after
    a write, the worker's sync thread polls.
    """

    def __init__(self, store: FeatureStore, max_users: int) -> None:
        self.store = store
        self.max_users = int(max_users)
        self._users: OrderedDict[str, UserHistory] = OrderedDict()
        self._lock = threading.Lock()  # the LRU, the horizon and the recent feed events
        self._feed_lock = threading.Lock()  # one feed poll at a time
        #: highest feed id seen, and every id at or below ``horizon`` is applied or never comes
        self.seq = self.horizon = store.last_event_seq()
        self._gaps: dict[int, float] = {}  # skipped id -> when first skipped (monotonic)
        self._recent: deque[tuple[float, StoredEvent]] = deque()
        self._changed: set[str] = set()  # cached users the feed added events to, until taken
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._users)

    # ---- reads -------------------------------------------------------------------------
    def get(self, user_id: str) -> UserHistory | None:
        """The cached history (marked recently used), or None: then call :meth:`load` off the loop."""
        with self._lock:
            entry = self._users.get(user_id)
            if entry is None:
                self.misses += 1
                return None
            self._users.move_to_end(user_id)
            self.hits += 1
            return entry

    def load(self, user_id: str) -> UserHistory:
        """Read one user's history from the store and cache it. Blocking: not on the event loop."""
        horizon = self.horizon  # read before the store read (see the module doc)
        events = self.store.user_events(user_id)
        return self._insert({user_id: events}, horizon)[user_id]

    def warm(self, n_users: int) -> int:
        """Load the histories of the ``n_users`` most recently active users; returns how many."""
        if n_users <= 0:
            return 0
        horizon = self.horizon
        warmed = 0
        for events in self.store.recent_users_events(min(n_users, self.max_users)):
            by_user: dict[str, list[StoredEvent]] = {}
            for event in events:
                by_user.setdefault(event.user_id, []).append(event)
            warmed += len(self._insert(by_user, horizon, stop_when_full=True))
            if len(self._users) >= self.max_users:
                break
        return warmed

    def _insert(
        self, by_user: dict[str, list[StoredEvent]], horizon: int, stop_when_full: bool = False
    ) -> dict[str, UserHistory]:
        out = {}
        with self._lock:
            replay: dict[str, list[StoredEvent]] = {}
            for _, event in self._recent:
                if event.seq > horizon and event.user_id in by_user:
                    replay.setdefault(event.user_id, []).append(event)
            for user_id, events in by_user.items():
                existing = self._users.get(user_id)
                if existing is not None:  # a concurrent load (or the feed) got there first
                    out[user_id] = existing
                    continue
                entry = UserHistory()
                loaded = set()
                for event in events:
                    entry.add(event)
                    if event.seq > horizon:
                        loaded.add(event.seq)
                for event in replay.get(user_id, ()):
                    if event.seq not in loaded:
                        entry.add(event)
                entry.loaded_seqs = {s for s in loaded if s > self.horizon} or None
                out[user_id] = self._users[user_id] = entry
                while len(self._users) > self.max_users:
                    self._users.popitem(last=False)
                if stop_when_full and len(self._users) >= self.max_users:
                    break
        return out

    # ---- the feed ------------------------------------------------------------------------
    def poll(self) -> int:
        """Apply the events stored since the last poll to cached users; returns how many."""
        applied = 0
        with self._feed_lock:
            while True:
                events = self.store.events_since(self.seq, FEED_BATCH, also_seqs=sorted(self._gaps))
                now = time.monotonic()
                for event in events:
                    if self._gaps.pop(event.seq, None) is None and event.seq > self.seq:
                        for missing in range(max(self.seq + 1, event.seq - MAX_GAPS), event.seq):
                            self._gaps[missing] = now
                        self.seq = event.seq
                expired = [s for s, at in self._gaps.items() if now - at > GAP_SECONDS]
                for s in expired:
                    del self._gaps[s]
                for s in sorted(self._gaps)[: max(len(self._gaps) - MAX_GAPS, 0)]:
                    del self._gaps[s]
                with self._lock:
                    for event in events:
                        self._apply(event)
                        self._recent.append((now, event))
                    while self._recent and now - self._recent[0][0] > RECENT_SECONDS:
                        self._recent.popleft()
                    self.horizon = min(self._gaps) - 1 if self._gaps else self.seq
                applied += len(events)
                if len(events) < FEED_BATCH:
                    return applied

    def take_changed(self) -> dict[str, UserHistory]:
        """Copies of the cached histories the feed changed since the last call (for folding
        those users in before their next request: api/serving.py ``follow_events``)."""
        with self._lock:
            changed, self._changed = self._changed, set()
            return {
                user_id: UserHistory(list(entry.items), list(entry.values), entry.newest)
                for user_id in changed
                if (entry := self._users.get(user_id)) is not None
            }

    def _apply(self, event: StoredEvent) -> None:
        entry = self._users.get(event.user_id)
        if entry is None:
            return
        if entry.loaded_seqs:
            seen = event.seq in entry.loaded_seqs  # the miss read already had it
            entry.loaded_seqs = {s for s in entry.loaded_seqs if s > self.horizon and s != event.seq} or None
            if seen:
                return
        entry.add(event)
        self._changed.add(event.user_id)
