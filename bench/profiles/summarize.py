"""Summarize a py-spy ``record --format raw`` profile of the API server under load.

    py-spy record --pid PID --duration 20 --rate 200 --format raw --output raw.txt --nonblocking
    .venv/bin/python bench/profiles/summarize.py raw.txt [--top 15] [--under FUNC]
    .venv/bin/python bench/profiles/summarize.py bench/profiles/serve_before.raw.gz

(serve_before/serve_after.raw.gz are the raw profiles the .txt summaries were made from.)

Prints the top functions by total and by own time (share of all samples; line numbers folded
into the function), then how the samples of a request split into stages (first matching
stage from the root of each stack down; see STAGES).
"""

from __future__ import annotations

import argparse
import gzip
import re
from collections import Counter
from pathlib import Path

#: (stage, pattern on a frame "function (file)") — checked from the root of a stack down, the
#: first frame matching any stage decides the sample's stage.
STAGES = (
    ("FastAPI dependency resolution / validation", r"^solve_dependencies |^request_params_to_args "),
    ("catalog generation SQL (sync_catalog)", r"^ModelHolder\.sync_catalog "),
    ("SQL history read (user_activity)", r"^FeatureStore\.user_activity "),
    ("Recommender", r"^Recommender\."),
    (
        "response model + serialization",
        (
            r"^_items |^serialize_response |^_prepare_response_content |"
            r"^jsonable_encoder |Response\.render |^JSONResponse\.__init__ |"
            r"^UserRecommendations|^BaseModel\.__init__ "
        ),
    ),
    ("socket write / HTTP send", r"^_SelectorSocketTransport\.write |^RequestResponseCycle\.send "),
    ("HTTP parse / read", r"^_SelectorSocketTransport\._read_ready |^H11Protocol\."),
    ("metrics middleware", r"^MetricsMiddleware\.__call__ \(api/metrics.py:(?!6[47])"),
)

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")


def fold(frame: str) -> str:
    """``func (file:line)`` → ``func (file)``."""
    m = FRAME.match(frame)
    return f"{m['func']} ({m['file']})" if m else frame


def load(path: Path) -> list[tuple[list[str], int]]:
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    samples = []
    for line in text.splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        samples.append((stack.split(";"), int(count)))
    return samples


def stage_of(frames: list[str]) -> str:
    for frame in frames:
        for name, pattern in STAGES:
            if re.search(pattern, frame):
                return name
    return "other (event loop, routing, middleware, route body)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--under", help="only samples whose stack holds a frame with this text")
    args = parser.parse_args()
    samples = load(args.raw)
    if args.under:
        samples = [(f, c) for f, c in samples if any(args.under in x for x in f)]
    total_n = sum(c for _, c in samples)
    own, total, stages = Counter(), Counter(), Counter()
    for frames, count in samples:
        folded = [fold(f) for f in frames]
        own[folded[-1]] += count
        for f in set(folded):
            total[f] += count
        stages[stage_of(frames)] += count
    print(f"{total_n} samples" + (f" under {args.under!r}" if args.under else ""))
    print(f"\ntop {args.top} by total time (frames below the request handler)")
    print(f"{'total%':>7} {'own%':>6}  function")
    # leave out the framework frames every request passes through (nothing of their own)
    wrappers = {f for f, n in total.items() if n > 0.5 * total_n and own[f] < 0.01 * total_n}
    for func, n in [(f, n) for f, n in total.most_common() if f not in wrappers][: args.top]:
        print(f"{100 * n / total_n:7.1f} {100 * own[func] / total_n:6.1f}  {func}")
    print(f"\ntop {args.top} by own time")
    print(f"{'own%':>6} {'total%':>7}  function")
    for func, n in own.most_common(args.top):
        print(f"{100 * n / total_n:6.1f} {100 * total[func] / total_n:7.1f}  {func}")
    print("\nstages (share of busy samples)")
    for name, n in stages.most_common():
        print(f"{100 * n / total_n:6.1f}%  {name}")


if __name__ == "__main__":
    main()
