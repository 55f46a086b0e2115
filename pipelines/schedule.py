"""`recsys pipeline schedule`: APScheduler's BlockingScheduler firing `recsys store export`
then `recsys pipeline run`.

Each firing runs the pipeline in a child process (``python -m cli.main pipeline run CONFIG``):
memory is returned after every run and a crash cannot take the scheduler down. Within one
scheduler APScheduler never overlaps firings (``max_instances=1``, late firings coalesce);
across schedulers, hosts and manual runs the pipeline lock does it: a child that finds the lock
held exits with code 3 and the firing is logged as skipped.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

EXIT_MEANING = {
    0: "completed",
    1: "crashed (rerun with its --run-id to resume)",
    2: "config or usage error",
    3: "skipped: another run of this pipeline holds the lock",
    4: "stopped by data validation",
}


def export_offline() -> int:
    """Append the events posted since the last export to the offline log (``recsys store
    export`` in a child process); returns its exit code. A failure is logged, not fatal: the
    pipeline's snapshot exports again, and the watermark makes a later export catch up."""
    cmd = [sys.executable, "-m", "cli.main", "store", "export"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines() or proc.stderr.strip().splitlines() or [""]
    logger.log(
        logging.INFO if proc.returncode == 0 else logging.WARNING,
        "schedule: store export exited %d: %s",
        proc.returncode,
        lines[-1],
    )
    return proc.returncode


def fire(config: Path) -> int:
    """One firing: export new events to the offline log, then run the pipeline in a child
    process; returns the pipeline's exit code."""
    export_offline()
    cmd = [sys.executable, "-m", "cli.main", "pipeline", "run", str(config)]
    logger.info("schedule: starting %s", " ".join(cmd))
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    tail = (proc.stdout.strip().splitlines() or [""])[-2:] + (proc.stderr.strip().splitlines() or [""])[-1:]
    level = logging.INFO if proc.returncode == 0 else logging.WARNING
    logger.log(
        level,
        "schedule: run exited %d (%s): %s",
        proc.returncode,
        EXIT_MEANING.get(proc.returncode, "failed"),
        " | ".join(t for t in tail if t),
    )
    return proc.returncode


def run_schedule(
    config: Path,
    *,
    cron: str | None = None,
    interval_seconds: float | None = None,
    max_runs: int | None = None,
    timezone: str = "UTC",
) -> list[int]:
    """Block and fire on the schedule; returns the exit codes when ``max_runs`` is reached."""
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    trigger = (
        CronTrigger.from_crontab(cron, timezone=timezone)
        if cron
        else IntervalTrigger(seconds=interval_seconds, timezone=timezone)
    )
    scheduler = BlockingScheduler(timezone=timezone)
    codes: list[int] = []

    def job() -> None:
        codes.append(fire(Path(config).resolve()))
        if max_runs is not None and len(codes) >= max_runs:
            logger.info("schedule: %d runs done, exiting", len(codes))
            scheduler.shutdown(wait=False)

    scheduler.add_job(job, trigger, id="pipeline", max_instances=1, coalesce=True, misfire_grace_time=3600)
    logger.warning("schedule: pipeline %s on %s (Ctrl-C to stop)", config, cron or f"every {interval_seconds}s")
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    return codes
