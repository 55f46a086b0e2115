"""Sentence-BERT encoding throughput on short synthetic catalog texts.

    .venv/bin/python bench/sbert_bench.py [--n 10000] [--batch-sizes 32 64 128] [--device cpu]

Prints one row per batch size (after a warm-up batch), then a one-line summary; exit 0.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time

logger = logging.getLogger("sbert_bench")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="number of texts")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--device", default=None, help="cpu / cuda (default: sentence-transformers' choice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)

    from recsys.datasets.synthetic import generate_synthetic
    from recsys.models.content import EncoderUnavailable, SentenceEncoder, item_texts

    try:
        encoder = SentenceEncoder(device=args.device)
    except EncoderUnavailable as exc:
        logger.info("skipped: %s", exc)
        return 0
    import torch

    texts = item_texts(generate_synthetic(n_users=10, n_items=args.n, n_events=10, seed=0).items)
    mean_words = sum(len(t.split()) for t in texts) / len(texts)
    model = encoder._encoder()
    logger.info(
        "device=%s torch=%s threads=%d cpu=%s texts=%d mean_words=%.1f",
        model.device,
        torch.__version__,
        torch.get_num_threads(),
        platform.processor() or platform.machine(),
        len(texts),
        mean_words,
    )
    logger.info("%10s %8s %10s %12s", "batch_size", "texts", "seconds", "items/s")
    results = []
    for batch_size in args.batch_sizes:
        encoder.batch_size = batch_size
        encoder.encode(texts[:batch_size])  # warm-up
        start = time.perf_counter()
        vectors = encoder.encode(texts)
        seconds = time.perf_counter() - start
        assert vectors.shape == (len(texts), 384)
        results.append((batch_size, seconds, len(texts) / seconds))
        logger.info("%10d %8d %10.2f %12.1f", batch_size, len(texts), seconds, len(texts) / seconds)
    best = max(results, key=lambda r: r[2])
    logger.info(
        "summary: SBERT all-MiniLM-L6-v2 on %s: best %.1f items/s (batch_size=%d, %d texts)",
        model.device,
        best[2],
        best[0],
        len(texts),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
