"""API keys: from settings (``RECSYS_API_KEYS``) and/or the ``api_keys`` table (sha256 only).

Create a stored key: ``python -m api.keys create NAME`` (prints the key once);
revoke: ``python -m api.keys revoke NAME``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
import time

from sqlalchemy import Engine, select, update

from api.tables import api_keys_table, init_api_tables


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyChecker:
    """Answers "is this key valid?"; database lookups are cached for ``ttl`` seconds."""

    def __init__(self, engine: Engine, static_keys: list[str], ttl: float = 5.0) -> None:
        self.engine = engine
        self._static = [key_hash(k) for k in static_keys]
        self._ttl = ttl
        self._cache: dict[str, tuple[bool, float]] = {}

    def valid(self, key: str) -> bool:
        digest = key_hash(key)
        # Compare against every configured key in constant time.
        if any(hmac.compare_digest(digest, s) for s in self._static):
            return True
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is not None and now - hit[1] < self._ttl:
            return hit[0]
        with self.engine.connect() as conn:
            row = conn.execute(
                select(api_keys_table.c.id).where(
                    api_keys_table.c.key_sha256 == digest, api_keys_table.c.revoked.is_(False)
                )
            ).first()
        ok = row is not None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (ok, now)
        return ok


def create_key(engine: Engine, name: str) -> str:
    """Store a new key's hash under ``name``; returns the key (shown once, never stored)."""
    init_api_tables(engine)
    key = "rk_" + secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(api_keys_table.insert().values(name=name, key_sha256=key_hash(key)))
    return key


def revoke_key(engine: Engine, name: str) -> int:
    init_api_tables(engine)
    with engine.begin() as conn:
        return conn.execute(update(api_keys_table).where(api_keys_table.c.name == name).values(revoked=True)).rowcount


def _main(argv: list[str]) -> int:
    from feature_store import make_engine
    from recsys.settings import get_settings

    if len(argv) != 2 or argv[0] not in ("create", "revoke"):
        print("usage: python -m api.keys create|revoke NAME", file=sys.stderr)
        return 2
    engine = make_engine(get_settings().database_url)
    if argv[0] == "create":
        sys.stdout.write(create_key(engine, argv[1]) + "\n")
    else:
        n = revoke_key(engine, argv[1])
        sys.stdout.write(f"revoked {n} key(s) named {argv[1]!r}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
