"""Shared pytest fixtures. Each owner keeps their fixtures in one marked block."""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# Database fixtures (feature store): sqlite_url, postgres_url, postgres_url_module, db_url
# ---------------------------------------------------------------------------------------------
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "RECSYS_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A fresh SQLite file (its folder does not exist yet, so make_engine must create it)."""
    return f"sqlite:///{tmp_path / 'fs' / 'feature_store.db'}"


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A fresh, uniquely named database on the local PostgreSQL server, dropped afterwards.

    Skips when the server is unreachable, except under CI (env CI set), where that is a failure.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"recsys_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any connection failure means "no server here"
        admin.dispose()
        reason = f"PostgreSQL not reachable at {make_url(POSTGRES_ADMIN_URL).render_as_string()}: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url():
    """A fresh database for one test (see fresh_postgres_database)."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def postgres_url_module():
    """A fresh database shared by the tests of one module (e.g. several server processes on it)."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    """Runs the test once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


# ---------------------------------------------------------------------------------------------
# end of database fixtures
# ---------------------------------------------------------------------------------------------
