"""The store's one retry policy: a write transaction that lost a race runs again.

On PostgreSQL two writers can deadlock (40P01) or, under REPEATABLE READ / SERIALIZABLE, fail
to serialize (40001). The server has then rolled the whole transaction back, and every store
write is idempotent (upserts; events keyed by event_id), so running it again is safe. The
backend decides which errors qualify; callers of the store never retry themselves.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from feature_store.backends import Backend

logger = logging.getLogger(__name__)

T = TypeVar("T")


class WriteConflict(RuntimeError):
    """A write lost a race with concurrent writers on every attempt; nothing of it was stored."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a write that lost a race is run again."""

    max_attempts: int = 8
    #: seconds; attempt n waits about ``base_delay * n`` (jittered) before running again
    base_delay: float = 0.01

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")

    def delay(self, attempt: int) -> float:
        # Jitter: two writers that collided must not retry in lockstep and collide again.
        return self.base_delay * attempt * (1 + random.random())


def run_write(engine: Engine, backend: Backend, policy: RetryPolicy, what: str, work: Callable[[Connection], T]) -> T:
    """``work(conn)`` in one transaction, run again while it fails with a retryable error."""
    for attempt in range(1, policy.max_attempts + 1):
        try:
            with engine.begin() as conn:
                return work(conn)
        except DBAPIError as exc:
            if not backend.is_retryable(exc):
                raise
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
            if attempt == policy.max_attempts:
                raise WriteConflict(
                    f"{what}: lost to concurrent writers {attempt} time(s), nothing stored ({reason})"
                ) from exc
            logger.info("%s: transaction rolled back (%s), running it again (attempt %d)", what, reason, attempt + 1)
            time.sleep(policy.delay(attempt))
    raise AssertionError("unreachable")
