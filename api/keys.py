"""API keys: from settings (``RECSYS_API_KEYS``) and/or stored in the feature store (sha256 only).

Create a stored key: ``python -m api.keys create NAME`` (prints the key once);
revoke: ``python -m api.keys revoke NAME``. A worker caches the answer for a stored key for
:data:`KEY_CACHE_SECONDS`: a revocation through :meth:`KeyChecker.revoke` takes effect at once
in that process, and in every other worker and replica within that bound.
"""

from __future__ import annotations

import hmac
import sys
import time

from feature_store import FeatureStore, key_hash

__all__ = ["KEY_CACHE_SECONDS", "NO_KEYS_HINT", "KeyChecker", "key_hash"]

#: how to give a server its first key (the start-up warning and the 401 of a keyless server say it)
NO_KEYS_HINT = (
    "set RECSYS_API_KEYS=<key>[,<key>...] and restart the server, "
    "or store one with `python -m api.keys create NAME` (no restart needed)"
)


#: how long a worker trusts its last lookup of a stored key (the bound on a revocation made
#: elsewhere reaching this worker)
KEY_CACHE_SECONDS = 1.0


class KeyChecker:
    """Answers "is this key valid?"; stored-key lookups are cached for ``ttl`` seconds."""

    def __init__(self, store: FeatureStore, static_keys: list[str], ttl: float = KEY_CACHE_SECONDS) -> None:
        self.store = store
        self._static = [key_hash(k) for k in static_keys]
        self._ttl = ttl
        # Keyed by digest: the plain keys are not kept in memory.
        self._cache: dict[str, tuple[bool, float]] = {}
        self._any_stored: tuple[bool, float] | None = None

    def valid(self, key: str) -> bool:
        digest = key_hash(key)
        # Compare against every configured key in constant time.
        if any(hmac.compare_digest(digest, s) for s in self._static):
            return True
        hit = self._cache.get(digest)
        now = time.monotonic()
        if hit is not None and now - hit[1] < self._ttl:
            return hit[0]
        ok = self.store.api_key_active(key)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (ok, now)
        return ok

    def any_configured(self) -> bool:
        """Whether any key could be valid: one from settings, or an active stored one (that
        lookup cached for ``ttl`` seconds like the others)."""
        if self._static:
            return True
        now = time.monotonic()
        if self._any_stored is None or now - self._any_stored[1] >= self._ttl:
            self._any_stored = (self.store.has_api_keys(), now)
        return self._any_stored[0]

    def revoke(self, name: str) -> int:
        """Revoke every stored key named ``name``; this checker forgets what it cached at once."""
        n = self.store.revoke_api_keys(name)
        self._cache.clear()
        self._any_stored = None
        return n


def _main(argv: list[str]) -> int:
    from recsys.settings import get_settings
    from recsys.validation import label_problem

    if len(argv) != 2 or argv[0] not in ("create", "revoke"):
        print("error: usage: python -m api.keys create|revoke NAME", file=sys.stderr)
        return 2
    command, name = argv
    problem = label_problem(name)
    if problem:
        print(f"error: NAME: {problem}", file=sys.stderr)
        return 2
    store = FeatureStore(get_settings().database_url)
    try:
        if command == "create":
            sys.stdout.write(store.create_api_key(name) + "\n")
        else:
            n = KeyChecker(store, []).revoke(name)
            sys.stdout.write(f"revoked {n} key(s) named {name!r}\n")
    finally:
        store.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
