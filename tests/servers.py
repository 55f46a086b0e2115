"""Real server processes for the tests that are about processes: `recsys serve` (as users
deploy it), an MLflow tracking server, and nginx in front of API replicas.

Each context manager starts the process in its own process group with its output in a log
file, waits with a deadline until it answers over HTTP (the log tail is in the error when it
does not), and stops the whole group on exit. ``free_port`` is tests/harness.py's (the benches use it
too); tests import both from here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from harness import ROOT, free_port

__all__ = [
    "RECSYS",
    "ServerProcess",
    "free_port",
    "mlflow_server",
    "nginx_binary",
    "nginx_config",
    "nginx_proxy",
    "serve_process",
    "wait_for_http",
]

#: the `recsys` command of this checkout (the same interpreter as the tests)
RECSYS = [sys.executable, "-m", "cli.main"]


@dataclass
class ServerProcess:
    """A started server: its base URL, process and log file."""

    name: str
    url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the process group: a crash, no shutdown handler runs."""
        _signal_group(self.process, signal.SIGKILL)
        self.process.wait(timeout=30)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group id is the pid: started with start_new_session
    except ProcessLookupError:
        pass


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the group (graceful shutdown), SIGKILL it when it does not exit in time."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=30)
    else:
        _signal_group(proc, signal.SIGKILL)  # children that outlived the leader


def wait_for_http(
    server: ServerProcess,
    path: str,
    *,
    timeout: float,
    accept: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
) -> httpx.Response:
    """Poll ``server.url + path`` until ``accept`` holds; RuntimeError (with the log tail) when
    the process exits or the deadline passes first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = httpx.get(server.url + path, timeout=5)
            if accept(response):
                return response
        except httpx.HTTPError:
            pass
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with code {server.process.returncode}; log {server.log_path}:\n"
                f"{server.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{server.name} did not answer {path} within {timeout:.0f}s; log {server.log_path}:\n"
                f"{server.log_tail()}"
            )
        time.sleep(0.2)


@contextmanager
def _server(
    name: str,
    cmd: list[str],
    *,
    url: str,
    log_path: Path,
    ready_path: str,
    ready_timeout: float,
    env: dict[str, str] | None = None,
    accept: Callable[[httpx.Response], bool] = lambda r: r.status_code == 200,
) -> Iterator[ServerProcess]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(name=name, url=url, process=proc, log_path=log_path)
    try:
        wait_for_http(server, ready_path, timeout=ready_timeout, accept=accept)
        yield server
    finally:
        _stop(proc)


@contextmanager
def serve_process(
    env: dict[str, str],
    *,
    log_path: Path,
    port: int | None = None,
    name: str = "recsys serve",
    ready_timeout: float = 180,
    ready_path: str = "/ready",
) -> Iterator[ServerProcess]:
    """``recsys serve --host 127.0.0.1 --port PORT`` with ``env``; yields once ``ready_path``
    answers 200 (``/ready``: a model is loaded; ``/health``: the process answers)."""
    port = port or free_port()
    cmd = [*RECSYS, "serve", "--host", "127.0.0.1", "--port", str(port)]
    with _server(
        name,
        cmd,
        url=f"http://127.0.0.1:{port}",
        log_path=log_path,
        ready_path=ready_path,
        ready_timeout=ready_timeout,
        env=env,
    ) as server:
        yield server


def mlflow_server_command(root: Path, port: int, backend_store_uri: str | None = None) -> list[str]:
    """The MLflow tracking server: runs and registry in ``backend_store_uri`` (default a SQLite
    file under ``root``), artifacts proxied by the server into ``root/artifacts``."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        (root / "artifacts").as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


@contextmanager
def mlflow_server(
    root: Path, *, port: int | None = None, backend_store_uri: str | None = None, ready_timeout: float = 180
) -> Iterator[ServerProcess]:
    """A real ``mlflow server`` process (see mlflow_server_command); yields once /health answers."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    # No MLflow job runner (GenAI evaluation jobs; unused here): seven fewer processes.
    env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with _server(
        "mlflow server",
        mlflow_server_command(root, port, backend_store_uri),
        url=f"http://127.0.0.1:{port}",
        log_path=root / "mlflow-server.log",
        ready_path="/health",
        ready_timeout=ready_timeout,
        env=env,
    ) as server:
        yield server


def nginx_binary() -> str | None:
    """Debian's nginx (in /usr/sbin, which a non-root PATH may lack), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def nginx_config(upstreams: list[str], *, port: int, prefix: Path) -> str:
    """A round-robin reverse proxy on 127.0.0.1:port over ``upstreams`` (host:port), with every
    file nginx writes (pid, logs, temp folders) under ``prefix``."""
    servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=5s;" for u in upstreams)
    return f"""\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    # Request and response bodies stay in memory: the workers need no access to the temp folders.
    client_body_buffer_size 1m;
    client_max_body_size 8m;
    proxy_max_temp_file_size 0;
    upstream recsys {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://recsys;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # A replica that is down: reads go to the other one (POSTs are not retried).
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


@contextmanager
def nginx_proxy(
    upstreams: list[str], prefix: Path, *, port: int | None = None, ready_timeout: float = 30
) -> Iterator[ServerProcess]:
    """nginx in the foreground (``-g 'daemon off;'``) with nginx_config; yields once it answers."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (Debian: apt-get install nginx)")
    port = port or free_port()
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(upstreams, port=port, prefix=prefix))
    cmd = [binary, "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log"), "-g", "daemon off;"]
    with _server(
        "nginx",
        cmd,
        url=f"http://127.0.0.1:{port}",
        log_path=prefix / "nginx.out",
        ready_path="/health",
        ready_timeout=ready_timeout,
        accept=lambda r: True,
    ) as server:
        yield server
