"""Several uvicorn worker processes on one port, each with a listening socket of its own.

uvicorn's ``--workers`` shares one listening socket among the processes, and whichever process
wakes first accepts every connection pending on it: keep-alive clients that connect together
(a load balancer's pool, wrk's 16 connections) end up on one worker while the others idle
(bench/serve_bench.py measured 0.92–1.18× one worker's throughput with 2 workers). With
``SO_REUSEPORT`` each worker binds its own socket to the port and the kernel spreads new
connections over the sockets by a hash of their addresses, so the workers share the load.

The parent supervises: a worker that dies is started again; SIGINT/SIGTERM stop every worker
(uvicorn's graceful shutdown in each) and then the parent.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

#: seconds a worker gets to finish its requests after SIGTERM before it is killed
GRACEFUL_SECONDS = 15.0
#: a worker that exits sooner than this after its start, more than STARTUP_RETRIES times in a
#: row, stops the server (exit 3) rather than being restarted in a loop
STARTUP_SECONDS = 5.0
STARTUP_RETRIES = 3


def reuseport_supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def _listening_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(2048)
    return sock


def _run_worker(app: str, host: str, port: int, uvicorn_options: dict[str, Any]) -> None:
    import uvicorn

    sock = _listening_socket(host, port)
    config = uvicorn.Config(app, host=host, port=port, **uvicorn_options)
    uvicorn.Server(config).run(sockets=[sock])


def serve_workers(app: str, host: str, port: int, workers: int, **uvicorn_options: Any) -> None:
    """Run ``workers`` uvicorn processes serving ``app`` (an import string) on ``host:port``
    until SIGINT/SIGTERM; one process means plain ``uvicorn.run``."""
    import uvicorn

    if workers <= 1 or not reuseport_supported():
        uvicorn.run(app, host=host, port=port, workers=workers, **uvicorn_options)
        return
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited half-initialised
    stop = threading.Event()

    started: dict[int, float] = {}

    def start(number: int):
        started[number] = time.monotonic()
        process = context.Process(
            target=_run_worker, args=(app, host, port, uvicorn_options), name=f"recsys-worker-{number}", daemon=False
        )
        process.start()
        logger.info(
            "worker %d started (pid %d) on %s:%d with its own SO_REUSEPORT socket", number, process.pid, host, port
        )
        return process

    def on_signal(signum, frame) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    processes = [start(n) for n in range(workers)]
    failed = False
    early_exits = [0] * workers
    try:
        while not stop.wait(0.5):
            for n, process in enumerate(processes):
                if process.is_alive():
                    continue
                early = time.monotonic() - started[n] < STARTUP_SECONDS
                early_exits[n] = early_exits[n] + 1 if early else 0
                if early_exits[n] > STARTUP_RETRIES:
                    # dying again and again while starting (bad settings, unreadable model store)
                    logger.error(
                        "worker %d exited with %s while starting, %d times: stopping",
                        n,
                        process.exitcode,
                        early_exits[n],
                    )
                    failed = True
                    stop.set()
                    break
                logger.warning("worker %d (pid %d) exited with %s: starting it again", n, process.pid, process.exitcode)
                processes[n] = start(n)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes the requests in flight
        for process in processes:
            process.join(GRACEFUL_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        raise SystemExit(3)
