"""Every shell command and curl printed in README.md and docs/*.md runs as printed.

The fenced ``bash`` / ``sh`` / ``shell`` / ``console`` blocks are extracted and each block runs
as one bash script, in file order, against one demo-trained store: the module fixture runs
the README's ``make demo`` in a scratch working copy (real SQLite feature store, real MLflow
store under ``.recsys/``), and every block after it runs in that folder, so a relative path in
the docs (``.recsys/mlflow.db``, ``experiments/quick.yaml``) means what it means to a reader
in a fresh clone. ``.venv/bin/…`` is the interpreter running the tests (a venv of its own
whose ``bin`` and ``lib`` are this one's, so nothing is installed).

How a block runs:
- ``set -euo pipefail``: the first command that fails fails the test, with the block's output.
- ``curl`` fails on an HTTP error (``--fail-with-body``): a curl answered 401 or 422 is a
  command that does not run as printed.
- A server (``make serve``, ``recsys serve``, ``mlflow ui``/``server``) starts in the
  background and the next line runs once its port answers; a scheduler (``recsys pipeline
  schedule``) must still be running after a few seconds. Whatever a block started is stopped
  when it ends.
- A block that calls the API (``curl …:8000``) without starting a server runs against the
  README's server, started first: ``RECSYS_API_KEYS=dev-key recsys serve --port 8000``.
- Each block runs in a network namespace of its own (``unshare -n``, loopback only), so the
  ports the docs print (8000, 5000) are free whatever else runs on the machine.

What a test cannot have: a block whose first line, or a command whose comment, says
``not run by tests: <reason>`` is skipped, and the reason is shown beside it in the docs (a
Spark cluster, PostgreSQL + an MLflow server + nginx, the test suite itself). The set is kept
small (``MAX_NOT_RUN``); tests/test_replicas.py and tests/test_spark_engine.py run those
setups their own way.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_FENCE = re.compile(r"^```(?:bash|sh|shell|console)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"#.*\bnot run by tests:\s*(?P<reason>\S.*)$")
#: most blocks or commands the docs may keep out of this test
MAX_NOT_RUN = 4
#: what the module fixture runs to make the demo-trained store (README's quick start)
SETUP_COMMAND = "make demo"
ENV_ASSIGNMENT = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)+")
SERVER = re.compile(r"^(?:make serve|(?:\S*/)?recsys serve|(?:\S*/)?mlflow (?:ui|server))\b")
DAEMON = re.compile(r"^(?:\S*/)?recsys pipeline schedule\b")
DEFAULT_PORTS = {"mlflow": 5000}
BLOCK_TIMEOUT = 900
#: the server a block of API calls assumes (README.md, "Serve")
README_SERVER = "RECSYS_API_KEYS=dev-key recsys serve --port 8000"


@dataclass(frozen=True)
class DocBlock:
    path: Path
    line: int
    text: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    def not_run_reason(self) -> str | None:
        first = next((ln for ln in self.text.splitlines() if ln.strip()), "")
        match = NOT_RUN.search(first) if first.lstrip().startswith("#") else None
        return match["reason"] if match else None

    def commands(self) -> list[str]:
        """Commands with their continuation lines joined; comment-only and blank lines left out."""
        out: list[str] = []
        pending = ""
        for raw in self.text.splitlines():
            line = pending + raw.strip()
            if line.endswith("\\"):
                pending = line[:-1].rstrip() + " "
                continue
            pending = ""
            if line and not line.startswith("#"):
                out.append(line)
        return out


def doc_blocks() -> list[DocBlock]:
    blocks = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in SHELL_FENCE.finditer(text):
            blocks.append(DocBlock(path, text.count("\n", 0, match.start()) + 1, match.group(1)))
    return blocks


BLOCKS = doc_blocks()


def _bare(command: str) -> str:
    """The command without its leading ``VAR=value`` assignments and trailing comment."""
    words = ENV_ASSIGNMENT.sub("", command)
    return words.split(" #", 1)[0].strip()


def _uncommented(command: str) -> str:
    """The command without its trailing ``# comment`` (a server's output is redirected after it)."""
    return re.sub(r"\s+#.*$", "", command)


def _port(command: str) -> int:
    match = re.search(r"--port[ =](\d+)", command)
    if match:
        return int(match.group(1))
    return DEFAULT_PORTS["mlflow"] if "mlflow " in _bare(command) else 8000


def script_for(block: DocBlock) -> str:
    """The bash script that runs ``block`` as printed (see the module docstring)."""
    lines = [
        "set -euo pipefail",
        "ip link set lo up",
        'curl() { command curl --fail-with-body --silent --show-error --max-time 120 "$@"; echo; }',
        "wait_port() {  # until something answers on 127.0.0.1:$1, while the server ($2) lives",
        "  for _ in $(seq 600); do",
        '    command curl --silent --output /dev/null --max-time 2 "http://127.0.0.1:$1/" && return 0',
        '    kill -0 "$2" 2>/dev/null || { echo "server on port $1 exited"; return 1; }',
        "    sleep 0.5",
        "  done",
        '  echo "nothing answers on port $1"; return 1',
        "}",
    ]
    commands = block.commands()
    calls_api = any(c.startswith("curl") and "127.0.0.1:8000" in c for c in commands)
    if calls_api and not any(SERVER.match(_bare(c)) for c in commands):
        commands = [README_SERVER, *commands]
    for n, command in enumerate(commands):
        marked = NOT_RUN.search(command)
        shown = shlex.quote(f"$ {command}")
        if marked:
            lines.append(f"echo {shown} '(not run: {marked['reason']})'")
        elif _bare(command) == SETUP_COMMAND:
            lines.append(f"echo {shown} '(run by the test fixture)'")
        elif SERVER.match(_bare(command)):
            lines += [
                f"echo {shown}",
                f"{_uncommented(command)} > server-{n}.log 2>&1 &",
                f"wait_port {_port(command)} $! || {{ cat server-{n}.log; exit 1; }}",
            ]
        elif DAEMON.match(_bare(command)):
            lines += [
                f"echo {shown}",
                f"{_uncommented(command)} > daemon-{n}.log 2>&1 &",
                "pid=$!; sleep 8",
                f"kill -0 $pid || {{ cat daemon-{n}.log; echo 'the scheduler exited'; exit 1; }}",
            ]
        else:
            lines += [f"echo {shown}", command]
    lines.append("echo 'docs block: every command ran'")
    return "\n".join(lines) + "\n"


def _fake_venv(workspace: Path) -> Path:
    """``.venv`` of the workspace: this interpreter's venv seen from there (its pyvenv.cfg,
    ``bin`` and ``lib``), and the Makefile's install stamp, so ``make`` installs nothing."""
    venv = workspace / ".venv"
    venv.mkdir()
    prefix = Path(sys.prefix)
    if (prefix / "pyvenv.cfg").exists():
        shutil.copy(prefix / "pyvenv.cfg", venv / "pyvenv.cfg")
    for name in ("bin", "lib"):
        (venv / name).symlink_to(prefix / name)
    (venv / ".installed-test").touch()  # the Makefile's STAMP for its default EXTRAS
    return venv


def _env(workspace: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        # a parent make's flags (make test EXTRAS=…) would change which stamp make looks for
        if not k.startswith("RECSYS_") and k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MLFLOW_TRACKING_URI")
    }
    env["PATH"] = f"{workspace / '.venv' / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    env["PYTHONPATH"] = str(ROOT)  # the code under test, whatever the venv has installed
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def _run(argv: list[str], workspace: Path, log: Path, timeout: float) -> subprocess.CompletedProcess:
    """``argv`` in ``workspace``; whatever it left running (a server) is stopped afterwards."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, cwd=workspace, env=_env(workspace), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
    return subprocess.CompletedProcess(argv, rc if rc is not None else -1, log.read_text(errors="replace"), "")


def _has_netns() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A scratch working copy (the repository's files linked in) where ``make demo`` has run:
    generated data in the SQLite feature store, a searched and promoted model in MLflow."""
    if not _has_netns():
        pytest.skip("needs `unshare -n` (root) for a private loopback: the docs' ports must be free")
    ws = tmp_path_factory.mktemp("docs-workspace")
    for entry in ROOT.iterdir():
        if entry.name not in (".venv", ".recsys", "reports", ".git"):
            (ws / entry.name).symlink_to(entry)
    _fake_venv(ws)
    proc = _run(["make", *SETUP_COMMAND.split()[1:]], ws, ws / "make-demo.log", BLOCK_TIMEOUT)
    assert proc.returncode == 0, f"`{SETUP_COMMAND}` failed:\n{proc.stdout[-4000:]}"
    assert (ws / ".recsys" / "mlflow.db").exists() and (ws / ".recsys" / "feature_store.db").exists()
    return ws


def test_the_docs_hold_shell_blocks_and_few_are_kept_out():
    names = [b.name for b in BLOCKS]
    assert any(SETUP_COMMAND in c for b in BLOCKS for c in b.commands()), names
    assert any("curl" in c for b in BLOCKS for c in b.commands()), names
    not_run = [b.name for b in BLOCKS if b.not_run_reason()] + [
        f"{b.name}: {c}" for b in BLOCKS if not b.not_run_reason() for c in b.commands() if NOT_RUN.search(c)
    ]
    assert len(not_run) <= MAX_NOT_RUN, f"too many doc commands kept out of the test: {not_run}"


def test_the_extractor_joins_continuations_and_honours_the_marker():
    block = DocBlock(
        ROOT / "README.md",
        1,
        "# a comment\nRECSYS_X=1 recsys serve --port 8001  # comment\ncurl -X POST \\\n  -d '{}' http://x/\n"
        "make test  # not run by tests: it is the suite\n",
    )
    assert block.commands()[1] == "curl -X POST -d '{}' http://x/"
    script = script_for(block)
    assert "RECSYS_X=1 recsys serve --port 8001 > server-0.log 2>&1 &" in script and "wait_port 8001 $!" in script
    assert "(not run: it is the suite)" in script
    assert "\nmake test" not in script
    assert DocBlock(ROOT / "x.md", 1, "# not run by tests: needs nginx\nnginx\n").not_run_reason() == "needs nginx"
    api_only = script_for(DocBlock(ROOT / "x.md", 1, "curl 'http://127.0.0.1:8000/health'\n"))
    assert api_only.index(f"{README_SERVER} > server-0.log") < api_only.index("curl 'http://127.0.0.1:8000/health'")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_doc_block_runs_as_printed(block: DocBlock, workspace: Path):
    reason = block.not_run_reason()
    if reason:
        pytest.skip(f"marked in {block.name}: not run by tests: {reason}")
    script = workspace / f"block-{block.path.stem}-{block.line}.sh"
    script.write_text(script_for(block))
    proc = _run(["unshare", "-n", "bash", str(script)], workspace, script.with_suffix(".log"), BLOCK_TIMEOUT)
    assert proc.returncode == 0 and "docs block: every command ran" in proc.stdout, (
        f"{block.name} does not run as printed (exit {proc.returncode}):\n{proc.stdout[-6000:]}"
    )
