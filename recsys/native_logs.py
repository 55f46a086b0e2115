"""Log lines that native libraries write straight to file descriptor 2.

ScaNN logs through absl's C++ logging before anything initialises it, so every partitioning
step prints an ``I0000 00:00:…`` line to standard error, and no environment variable turns
that off. :func:`native_stderr_as_debug` sends those lines to a Python logger at DEBUG instead
(``recsys -v`` shows INFO; a DEBUG handler still sees them).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def native_stderr_as_debug(logger: logging.Logger) -> Iterator[None]:
    """Inside the block, what is written to fd 2 goes to ``logger.debug`` afterwards, a line
    each. Meant for a short native call (an index build): Python writes to standard error in
    the meantime (another thread's log line) are logged the same way, none is lost."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (an embedding host): nothing to redirect
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", errors="replace").splitlines():
                if line.strip():
                    logger.debug("%s", line)
