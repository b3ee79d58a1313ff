"""Data-side throughput: loaders, SimCLR views, and encoder forward passes on CPU.

Rows: what was timed, the batch size, the median milliseconds per call and the rate. Inputs are
real data (Fashion-MNIST images, WordNet glosses). Run with ``python benchmarks/run.py data``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _median_ms(fn: Callable[[], object], min_seconds: float = 2.0, min_calls: int = 5) -> float:
    fn()  # warm-up
    times = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return 1000.0 * statistics.median(times)


def _row(item: str, batch: int, ms: float, unit: str) -> dict:
    return {
        "item": item,
        "batch": batch,
        "ms_per_call": round(ms, 2),
        "per_s": round(1000.0 * batch / ms, 1),
        "unit": unit,
    }


def run() -> dict:
    from contrastkit.data import (
        SimCLRViews,
        load_bible_pairs,
        load_emoji,
        load_fashion_mnist,
        load_foldoc,
        load_wordnet,
    )
    from contrastkit.encoders import SmallCNN, SmallResNet, TextEncoder

    rows = []
    # Loaders (one call each; WordNet/Bible/emoji parse or read their cache).
    for name, fn, unit in [
        ("load Fashion-MNIST train+test", lambda: load_fashion_mnist("all"), "images"),
        ("load WordNet example_gloss (all)", lambda: load_wordnet("example_gloss", "all"), "pairs"),
        ("load KJV/WEB pairs (cached)", lambda: load_bible_pairs("all"), "pairs"),
        ("load FOLDOC pairs (all)", lambda: load_foldoc("all"), "pairs"),
        ("load emoji 64x64 (cached)", lambda: load_emoji(size=64), "images"),
    ]:
        t0 = time.perf_counter()
        n = len(fn())
        rows.append(_row(name, n, 1000.0 * (time.perf_counter() - t0), unit))

    images = load_fashion_mnist("test").images[:256]  # (256, 1, 28, 28) uint8
    views = SimCLRViews(size=28, channels=1)
    seed = iter(range(10**6))
    ms = _median_ms(lambda: views(images, n_views=2, seed=next(seed)))
    rows.append(_row("SimCLRViews 2 views of 28x28", 256, ms, "image pairs"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # e.g. views made in a data-loading worker
    try:
        ms = _median_ms(lambda: views(images, n_views=2, seed=next(seed)))
    finally:
        torch.set_num_threads(threads)
    rows.append(_row("SimCLRViews 2 views of 28x28 (1 thread)", 256, ms, "image pairs"))

    x = images.float() / 255
    for name, enc in [("SmallCNN", SmallCNN(1)), ("SmallResNet", SmallResNet(1))]:
        enc.eval()
        with torch.no_grad():
            ms = _median_ms(lambda enc=enc: enc(x))
        rows.append(_row(f"{name} forward 28x28 (eval)", 256, ms, "images"))
        enc.train()

        def step(enc=enc) -> None:
            enc.zero_grad()
            enc(x).square().mean().backward()

        rows.append(_row(f"{name} forward+backward 28x28", 256, _median_ms(step), "images"))

    texts = load_wordnet("example_gloss", "test").positive[:64]
    minilm = TextEncoder()
    rows.append(
        _row(
            "MiniLM-L6 encode (WordNet glosses)",
            64,
            _median_ms(lambda: minilm.encode(texts), min_seconds=5.0),
            "sentences",
        )
    )
    tiny = TextEncoder.from_scratch()
    rows.append(
        _row(
            "tiny text encoder (128-d, 2 layers) encode",
            64,
            _median_ms(lambda: tiny.encode(texts)),
            "sentences",
        )
    )
    return {
        "title": "Data: loaders, SimCLR views, encoder forward (CPU)",
        "rows": rows,
        "notes": (
            f"torch threads: {torch.get_num_threads()}. Views: kornia RandomResizedCrop + flip + "
            "brightness/contrast jitter + blur + noise, per-image parameters, seeded; 'per_s' is "
            "source images turned into a pair of views per second. Encoders: median of repeated "
            "calls on Fashion-MNIST test images / WordNet test glosses."
        ),
    }
