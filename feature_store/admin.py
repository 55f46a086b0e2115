"""Admin tables: API keys (stored as sha256 only; the key itself is shown once, at creation)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import Connection, select, update

from feature_store.tables import api_keys_table

#: Every generated key starts with this, so a leaked key is recognizable (secret scanners).
API_KEY_PREFIX = "rk_"


def key_hash(key: str) -> str:
    """The sha256 hex digest under which a key is stored and looked up."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def insert_api_key(conn: Connection, name: str, key: str) -> None:
    conn.execute(api_keys_table.insert().values(name=name, key_sha256=key_hash(key)))


def revoke_api_keys(conn: Connection, name: str) -> int:
    """Revoke every key stored under ``name``; returns how many were active before."""
    res = conn.execute(
        update(api_keys_table)
        .where(api_keys_table.c.name == name, api_keys_table.c.revoked.is_(False))
        .values(revoked=True)
    )
    return int(res.rowcount)


def any_active_api_key(conn: Connection) -> bool:
    """Whether any stored key is not revoked."""
    return (
        conn.execute(select(api_keys_table.c.id).where(api_keys_table.c.revoked.is_(False)).limit(1)).first()
        is not None
    )


def api_key_active(conn: Connection, digest: str) -> bool:
    """Whether a key with this sha256 digest is stored and not revoked."""
    row = conn.execute(
        select(api_keys_table.c.id).where(api_keys_table.c.key_sha256 == digest, api_keys_table.c.revoked.is_(False))
    ).first()
    return row is not None
