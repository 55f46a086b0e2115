"""Every user-fixable bad input to the real `recsys` command: exit code 2, exactly one stderr line
``error: …`` naming the problem, and nothing written (store counts unchanged, no MLflow version).

Bad files, a busy port and concurrent trains run the installed `recsys` script as a subprocess
against a SQLite store in tmp_path and, where the database matters, a fresh PostgreSQL database;
config and database-URL cases (the same code path, no process state involved) go through
typer's CliRunner in-process to keep the table fast.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import create_engine, inspect, text
from typer.testing import CliRunner

pytestmark = pytest.mark.slow  # trains models or starts processes: not in make test-fast

REPO = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).with_name("recsys")
RECSYS = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "cli.main"]
TIMEOUT = 300


@dataclass
class Env:
    vars: dict[str, str]
    database_url: str
    tracking_uri: str
    tmp: Path

    def run(self, *args: str) -> subprocess.CompletedProcess:
        """The real `recsys` process."""
        return subprocess.run(
            RECSYS + list(args),
            check=False,
            env=self.vars,
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    def invoke(self, *args: str) -> subprocess.CompletedProcess:
        """The same command in-process (typer's CliRunner), as a CompletedProcess."""
        from cli.main import app
        from recsys.settings import get_settings

        get_settings.cache_clear()
        saved = dict(os.environ)
        os.environ.update({k: v for k, v in self.vars.items() if k.startswith("RECSYS_")})
        try:
            result = CliRunner().invoke(app, list(args), prog_name="recsys")
        finally:
            os.environ.clear()
            os.environ.update(saved)
            get_settings.cache_clear()
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback

            stderr += "".join(traceback.format_exception(result.exception))
        return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, stderr)


def _env(tmp_path: Path, database_url: str) -> Env:
    data = tmp_path / "data"
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "RECSYS_DATA_DIR": str(data),
        "RECSYS_DATABASE_URL": database_url,
        "RECSYS_MLFLOW_TRACKING_URI": tracking,
        "PYTHONPATH": str(REPO),
        "OPENBLAS_NUM_THREADS": "1",
        "COLUMNS": "100",
    }
    for name in (
        "RECSYS_MODEL_ALIAS",
        "RECSYS_REGISTERED_MODEL_NAME",
        "RECSYS_EXPERIMENT_NAME",
        "RECSYS_MLFLOW_ARTIFACT_ROOT",
    ):
        env.pop(name, None)
    return Env(env, database_url, tracking, tmp_path)


def _seed(url: str) -> None:
    """A few stored rows, so "nothing written" compares real counts."""
    from feature_store import FeatureStore
    from recsys.datasets.base import Dataset

    store = FeatureStore(url)
    store.ingest(
        Dataset(
            events=pd.DataFrame(
                {
                    "user_id": ["u1", "u2", "u2"],
                    "item_id": ["i1", "i1", "i2"],
                    "timestamp": [1_700_000_000, 1_700_000_060, 1_700_000_120],
                }
            )
        )
    )
    store.dispose()


@pytest.fixture
def sqlite_env(tmp_path, sqlite_url) -> Env:
    _seed(sqlite_url)
    return _env(tmp_path, sqlite_url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_env(request, tmp_path) -> Env:
    """A seeded feature store on SQLite, then on PostgreSQL."""
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    _seed(url)
    return _env(tmp_path, url)


def counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        names = set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            return {
                t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() if t in names else 0
                for t in ("events", "items", "users")
            }
    finally:
        engine.dispose()


def registered_versions(env: Env) -> int:
    if not (env.tmp / "mlflow.db").exists():
        return 0
    from mlflow.tracking import MlflowClient

    return len(MlflowClient(tracking_uri=env.tracking_uri, registry_uri=env.tracking_uri).search_model_versions())


def assert_one_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{proc.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


# ------------------------------------------------------------------ data files


def _csv_big_id(tmp: Path) -> Path:
    path = tmp / "big.csv"
    path.write_text("user_id,item_id,timestamp\nu9,i1,1700000000\nu" + "x" * 100_000 + ",i2,1700000060\n")
    return path


def _csv_bad_time(tmp: Path) -> Path:
    # epoch seconds, a blank line and a quoted field spanning two lines before the bad value
    path = tmp / "times.csv"
    path.write_text(
        'user_id,item_id,note,timestamp\nu7,i1,a,1700000000\n\nu8,i2,"two\nlines",1700000060\n'
        "u9,i3,b,1700000120\nu10,i4,c,notatime\n"
    )
    return path


def _parquet_bad_time(tmp: Path) -> Path:
    path = tmp / "times.parquet"
    pd.DataFrame(
        {
            "user_id": ["u7", "u8", "u9"],
            "item_id": ["i1", "i2", "i3"],
            "timestamp": ["2024-01-01", "2024-01-02", "31/31/2024"],
        }
    ).to_parquet(path)
    return path


def _csv_slash_item(tmp: Path) -> Path:
    path = tmp / "slash.csv"
    path.write_text("customer,sku\nu7,i1\nu8,a/b\n")
    return path


INGEST_CASES = {
    # name: (make file, extra args, needles in the error line)
    "directory": (lambda tmp: tmp, [], ["is a directory"]),
    "100 KB id": (_csv_big_id, [], ["big.csv line 3 (data row 2)", "user_id is 100,001 characters long (at most 255)"]),
    "bad time, csv": (_csv_bad_time, [], ["times.csv line 7 (data row 4)", "timestamp 'notatime' is not a time"]),
    "bad time, parquet": (_parquet_bad_time, [], ["times.parquet data row 3", "timestamp '31/31/2024' is not a time"]),
    "slash in mapped id": (
        _csv_slash_item,
        ["--map", "user_id=customer", "--map", "item_id=sku"],
        ["slash.csv line 3 (data row 2)", "item_id (column 'sku') contains '/'"],
    ),
}


@pytest.mark.parametrize("case", list(INGEST_CASES))
def test_bad_ingest_input(store_env, case):
    make, extra, needles = INGEST_CASES[case]
    path = make(store_env.tmp)
    fmt = "parquet" if path.suffix == ".parquet" else "csv"
    before = counts(store_env.database_url)
    assert_one_error(store_env.run("ingest", fmt, str(path), *extra), *needles)
    assert counts(store_env.database_url) == before


# ------------------------------------------------------------------ train configs

CONFIG_CASES = {
    "unknown key": (
        "model:\n  kind: als\n  factorz: 8\n",
        ["config model.factorz: unknown key", "known keys here: kind, params"],
    ),
    "nested unknown key": ("index:\n  treez: 3\n", ["config index.treez: unknown key", "n_trees"]),
    "param of the wrong type": (
        "model:\n  params: {factors: abc}\n",
        ["config model.params.factors:", "valid integer", "'abc'"],
    ),
    "unknown param": (
        "model:\n  params: {factors: 8, regularisation: 0.1}\n",
        ["config model.params.regularisation:", "als has no parameter 'regularisation'", "regularization"],
    ),
    "ensemble member param": (
        "model:\n  kind: ensemble\n  params:\n    members:\n      - {kind: als, params: {iterations: many}}\n",
        ["config model.params.members.0.params.iterations:", "valid integer"],
    ),
    "content param": (
        "content:\n  kind: tfidf\n  params: {n_components: 1.5}\n",
        ["config content.params.n_components:"],
    ),
    "unknown kind": ("model:\n  kind: alss\n", ["config model.kind:", "unknown model kind 'alss'"]),
    "invalid YAML": ("model:\n  params: {factors: 8\nk: 10\n", ["cfg.yaml line 3", "invalid YAML"]),
    "not a mapping": ("- als\n- bpr\n", ["cfg.yaml", "expected a mapping"]),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_train_config(sqlite_env, case):
    body, needles = CONFIG_CASES[case]
    cfg = sqlite_env.tmp / "cfg.yaml"
    cfg.write_text(body)
    assert_one_error(sqlite_env.invoke("train", "--config", str(cfg)), *needles)
    assert registered_versions(sqlite_env) == 0


def test_bad_train_config_real_process(sqlite_env):
    cfg = sqlite_env.tmp / "cfg.yaml"
    cfg.write_text("model:\n  params: {factors: abc}\n")
    assert_one_error(sqlite_env.run("train", "--config", str(cfg)), "config model.params.factors:", "'abc'")
    assert registered_versions(sqlite_env) == 0


def test_config_directory_binary_and_missing_config(sqlite_env):
    assert_one_error(sqlite_env.invoke("train", "--config", str(sqlite_env.tmp)), "Is a directory")
    (sqlite_env.tmp / "cfg.yaml").write_bytes(b"model: \xff\xfe\x00\n")
    assert_one_error(
        sqlite_env.invoke("train", "--config", str(sqlite_env.tmp / "cfg.yaml")), "cfg.yaml: not UTF-8 text"
    )
    assert_one_error(sqlite_env.invoke("train", "--config", str(sqlite_env.tmp / "nope.yaml")), "config not found")


def test_valid_params_are_converted_when_the_config_is_read():
    from pipelines.train import TrainConfig

    cfg = TrainConfig.model_validate(
        {"model": {"params": {"factors": "16"}}, "content": {"kind": "tfidf", "params": {"ngram_range": [1, 2]}}}
    )
    assert cfg.model.params == {"factors": 16} and cfg.content.params == {"ngram_range": (1, 2)}


# ------------------------------------------------------------------ database URL

MISSING_DB = f"recsys_missing_{uuid.uuid4().hex[:8]}"
DATABASE_CASES = {
    "not a URL": ("notaurl", ["cannot use the database notaurl", "Could not parse"]),
    "unknown driver": ("nosuchdb://bob:s3cret@127.0.0.1/x", ["nosuchdb://bob:***@127.0.0.1/x", "Can't load plugin"]),
    "port not a number": ("postgresql://bob:s3cret@127.0.0.1:port/x", ["postgresql://bob:***@127.0.0.1:port/x"]),
    "refused": (
        "postgresql+psycopg2://bob:s3cret@127.0.0.1:1/x",
        ["postgresql+psycopg2://bob:***@127.0.0.1:1/x", "Connection refused"],
    ),
    "no such database": (
        f"postgresql+psycopg2://postgres:s3cret@127.0.0.1:5432/{MISSING_DB}",
        [MISSING_DB, "does not exist"],
    ),
}


@pytest.mark.parametrize("command", [["ingest", "csv", "events.csv"], ["train"], ["online-report", "--no-mlflow"]])
@pytest.mark.parametrize("case", list(DATABASE_CASES))
def test_bad_database_url(request, tmp_path, case, command):
    url, needles = DATABASE_CASES[case]
    if case == "no such database":
        request.getfixturevalue("postgres_url")  # skips when no server is reachable
    env = _env(tmp_path, url)
    (tmp_path / "events.csv").write_text("user_id,item_id\nu1,i1\n")
    line = assert_one_error(
        env.invoke(*command[:2], *(str(tmp_path / a) if a.endswith(".csv") else a for a in command[2:])), *needles
    )
    assert "s3cret" not in line
    assert registered_versions(env) == 0


def test_unreachable_database_real_process(tmp_path):
    env = _env(tmp_path, "postgresql+psycopg2://bob:s3cret@127.0.0.1:1/x")
    line = assert_one_error(
        env.run("train"), "cannot use the database postgresql+psycopg2://bob:***@127.0.0.1:1/x", "Connection refused"
    )
    assert "s3cret" not in line
    assert registered_versions(env) == 0


# ------------------------------------------------------------------ serve


def test_serve_on_a_busy_port_fails_before_loading_anything(sqlite_env):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # no model is registered: without the port check first, serve would start and fail later
        assert_one_error(
            sqlite_env.run("serve", "--host", "127.0.0.1", "--port", str(port)),
            f"error: port {port} on 127.0.0.1 is in use",
        )


# ------------------------------------------------------------------ command-line syntax

SYNTAX_CASES = {
    "bad --as-of": (["train", "--as-of", "yesterday-ish"], ["Invalid value for '--as-of'", "recsys train --help"]),
    "unknown command": (["trian"], ["No such command 'trian'"]),
    "unknown sub-command": (["model", "lst"], ["No such command 'lst'", "recsys model --help"]),
    "unknown option": (["ingest", "csv", "x.csv", "--mapp", "a=b"], ["No such option: --mapp"]),
    "missing argument": (["ingest"], ["Missing argument 'FORMAT'"]),
    "port out of range": (["serve", "--port", "70000"], ["Invalid value for '--port'"]),
    "bad alias": (["train", "--alias", "prod uction"], ["Invalid alias name: 'prod uction'"]),
    "reserved alias": (["train", "--alias", "v3"], ["'v3' is reserved"]),
}


@pytest.mark.parametrize("case", list(SYNTAX_CASES))
def test_bad_command_line(sqlite_env, case):
    args, needles = SYNTAX_CASES[case]
    before = counts(sqlite_env.database_url)
    assert_one_error(sqlite_env.invoke(*args), *needles)
    assert counts(sqlite_env.database_url) == before
    assert registered_versions(sqlite_env) == 0


def test_bad_command_line_real_process(sqlite_env):
    assert_one_error(sqlite_env.run("train", "--as-of", "yesterday-ish"), "Invalid value for '--as-of'")
    assert registered_versions(sqlite_env) == 0


# ------------------------------------------------------------------ the error boundary


def test_every_command_goes_through_the_error_boundary():
    from cli.main import app

    def commands(typer_app, prefix=""):
        for info in typer_app.registered_commands:
            yield prefix + (info.name or info.callback.__name__), info.callback
        for group in typer_app.registered_groups:
            yield from commands(group.typer_instance, prefix + group.name + " ")

    found = dict(commands(app))
    assert {"train", "ingest", "serve", "online-report", "experiment run", "pipeline run", "model rollback"} <= set(
        found
    )
    unwrapped = [name for name, callback in found.items() if not getattr(callback, "__cli_errors__", False)]
    assert unwrapped == []


def test_unexpected_errors_keep_their_traceback():
    from cli.common import error_message

    assert error_message(KeyError("bug")) is None and error_message(RuntimeError("bug")) is None
    assert error_message(IsADirectoryError(21, "Is a directory", "/data")) == "/data: Is a directory"


# ------------------------------------------------------------------ concurrent train


def _wait_for(path: Path, needle: str, proc: subprocess.Popen, deadline_s: float = TIMEOUT) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if needle in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"first train exited {proc.returncode} before taking the lock:\n{path.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"first train did not take the lock in {deadline_s}s:\n{path.read_text()}")


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_trains_at_once_one_registers_the_other_exits_3(request, tmp_path, db):
    url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "postgres_url")
    env = _env(tmp_path, url)
    generated = env.run("generate", "--users", "200", "--items", "100", "--events", "5000")
    assert generated.returncode == 0, generated.stderr
    first_log = tmp_path / "first.err"
    with first_log.open("w") as err:
        first = subprocess.Popen(
            RECSYS + ["-v", "train", "--trials", "3"],
            env=env.vars,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        _wait_for(first_log, "holding the train lock", first)
        # Freeze the first run while it holds the lock, so the second certainly meets it.
        os.kill(first.pid, signal.SIGSTOP)
        try:
            second = env.run("train")
        finally:
            os.kill(first.pid, signal.SIGCONT)
        out, _ = first.communicate(timeout=TIMEOUT)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 3, second.stderr
    assert len(lines) == 1 and lines[0].startswith("locked: ") and "recsys train" in lines[0], second.stderr
    assert "registered" not in second.stdout
    assert first.returncode == 0, first_log.read_text()
    assert "registered recsys version 1, alias production" in out
    assert registered_versions(env) == 1
