"""Memory cost per process of loading a bundle as a private copy (what serving does) versus
memory-mapping the cache files (the old, unsafe way).

    python bench/bundle_rss.py --items 10000 --users 50000 --factors 64

Builds a bundle of random vectors with the two Annoy indexes serving uses (``user``: dot,
``item``: cosine; n_trees as IndexConfig's default), then loads it in a fresh subprocess each
way and reports RSS / USS / PSS (psutil) after load and after a query sweep that touches every
index page, plus the system's shared-memory growth (a memfd copy lives there).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MB = 1024 * 1024


def build(folder: Path, items: int, users: int, factors: int, n_trees: int) -> Path:
    import numpy as np

    from recsys.bundle import ModelBundle, ServingSpec
    from recsys.index.annoy_index import AnnoyItemIndex
    from recsys.models.foldin import FoldInSpec

    rng = np.random.default_rng(0)
    item_vectors = rng.normal(size=(items, factors)).astype(np.float32)
    user_vectors = rng.normal(size=(users, factors)).astype(np.float32)
    indexes = {
        "user": AnnoyItemIndex("dot", n_trees=n_trees, search_k=2000).build(item_vectors),
        "item": AnnoyItemIndex("cosine", n_trees=n_trees, search_k=2000).build(item_vectors),
    }
    bundle = ModelBundle(
        kind="als",
        params={},
        metric="dot",
        user_ids=np.array([f"u{i}" for i in range(users)], dtype=object),
        item_ids=np.array([f"i{i}" for i in range(items)], dtype=object),
        user_vectors=user_vectors,
        item_vectors=item_vectors,
        item_popularity=np.ones(items),
        indexes=indexes,
        fold_in=FoldInSpec(kind="als", params={}, weighting="confidence", alpha=1.0, trained_items=items),
        serving=ServingSpec(calibration=0.0, hybrid=None, content_kind=None),
    )
    return bundle.save(folder / "bundle")


def measure(path: str, mode: str) -> dict:
    """Runs in a fresh process: memory before/after load and after touching every page."""
    import numpy as np
    import psutil

    def shmem() -> int:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("Shmem:"):
                    return int(line.split()[1]) * 1024
        return 0

    proc = psutil.Process()

    def snap() -> dict:
        m = proc.memory_full_info()
        return {"rss": m.rss, "uss": m.uss, "pss": m.pss, "shmem_system": shmem()}

    before = snap()
    if mode == "private":
        from recsys.bundle import ModelBundle

        bundle = ModelBundle.load(Path(path), verify=True)
        indexes, vectors = bundle.indexes, bundle.item_vectors
        users = bundle.user_vectors
    else:  # the old way: np.load(mmap_mode="r") and Annoy mapping the cache file itself
        from annoy import AnnoyIndex

        folder = Path(path)
        vectors = np.load(folder / "item_vectors.npy", mmap_mode="r")
        users = np.load(folder / "user_vectors.npy", mmap_mode="r")
        indexes = {}
        for role in ("user", "item"):
            meta = json.loads((folder / f"index_{role}" / "index.json").read_text())
            ann = AnnoyIndex(meta["dims"], {"dot": "dot", "cosine": "angular"}[meta["metric"]])
            ann.load(str(folder / f"index_{role}" / "index.ann"))
            indexes[role] = ann
    loaded = snap()
    # touch everything: sum the arrays, and query each index enough to visit all its nodes
    float(np.asarray(vectors).sum()) + float(np.asarray(users).sum())
    for index in indexes.values():
        ann = index.index_ if mode == "private" else index
        for i in range(0, len(vectors), 10):
            ann.get_nns_by_item(i, 10, search_k=2000)
    touched = snap()
    return {"before": before, "loaded": loaded, "touched": touched}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--n-trees", type=int, default=50)
    parser.add_argument("--measure", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = build(Path(tmp), args.items, args.users, args.factors, args.n_trees)
        sizes = {str(p.relative_to(path)): p.stat().st_size for p in path.rglob("*") if p.is_file()}
        total = sum(sizes.values())
        ann = sum(v for k, v in sizes.items() if k.endswith(".ann"))
        print(
            f"bundle: {args.items} items, {args.users} users, {args.factors} factors: {total / MB:.1f} MB on disk "
            f"({ann / MB:.1f} MB Annoy)"
        )
        for mode in ("mmap", "private"):
            out = json.loads(
                subprocess.run(
                    [sys.executable, __file__, "--measure", str(path), mode], check=True, capture_output=True, text=True
                ).stdout
            )
            b = out["before"]
            for stage in ("loaded", "touched"):
                s = out[stage]
                print(
                    f"{mode:8s} {stage:8s} RSS +{(s['rss'] - b['rss']) / MB:6.1f} MB  USS +{(s['uss'] - b['uss']) / MB:6.1f} MB  "
                    f"PSS +{(s['pss'] - b['pss']) / MB:6.1f} MB  system Shmem +{(s['shmem_system'] - b['shmem_system']) / MB:6.1f} MB"
                )


if __name__ == "__main__":
    main()
