"""Data-side throughput: loaders, SimCLR views, and encoder forward passes on CPU.

Rows: what was timed, the batch size, the median milliseconds per call and the rate. Inputs are
real data (Fashion-MNIST images, WordNet glosses). Run with ``python benchmarks/run.py data``.

Image folders streamed from disk (``contrastkit.data.image_folder``) have their own section,
also runnable alone at small sizes::

    python benchmarks/bench_data.py folder --sizes 6000 60000 --batches 20

It writes Fashion-MNIST train as PNG files once (``$CK_FMNIST_PNG``, default
``/tmp/ck_fmnist_png``: ``<k>_<class>/<row>.png`` plus ``first_<n>.csv`` manifests of the
first n/10 images per class), then measures images/s through the ``DataLoader`` with 0, 1, 2
workers (decode only, and decode + two SimCLR views in the main process) against the same images
indexed from an in-memory tensor, and the peak memory (RSS and PSS of the main process plus its
workers, sampled every 0.1 s by psutil) over one epoch of each size, each in a fresh process.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

PNG_ROOT = Path(os.environ.get("CK_FMNIST_PNG", "/tmp/ck_fmnist_png"))


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


def run() -> list[dict]:
    """Two sections: packaged loaders / views / encoders, and image folders streamed from disk."""
    return [_run_loaders(), run_image_folder()]


def _run_loaders() -> dict:
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


# -- image folders streamed from disk -----------------------------------------------------


def subset_folder(root: Path, m: int) -> Path:
    """The sibling folder holding the first m/10 files of each class of ``root``."""
    return root.parent / f"{root.name}_first_{m}"


def write_fashion_mnist_pngs(root: Path = PNG_ROOT, n: int = 60_000) -> Path:
    """Fashion-MNIST train rows 0..n-1 as ``root/<k>_<class>/<row>.png``, written once (a marker
    file records a finished write); ``root/all.csv``, a manifest (path, label) of them all; and
    class folders of the first m/10 files per class for m = 6,000 and 20,000 beside ``root``
    (hard links to the same files, so every size reads the same bytes)."""
    from PIL import Image

    from contrastkit.data import load_fashion_mnist

    data = load_fashion_mnist("train")
    folders = [
        f"{k}_{name.split('/')[0].split()[0].lower()}" for k, name in enumerate(data.classes)
    ]
    labels = data.labels[:n].tolist()
    keys = [f"{folders[label]}/{row:05d}.png" for row, label in enumerate(labels)]
    marker = root / f".complete_{n}"
    if not marker.exists():
        for folder in folders:
            (root / folder).mkdir(parents=True, exist_ok=True)
        images = data.images[:n, 0].numpy()  # (n, 28, 28)
        for row, key in enumerate(keys):
            if not (root / key).exists():
                Image.fromarray(images[row]).save(root / key)
        tmp = root / "all.csv.tmp"
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label"])
            writer.writerows([key, data.classes[label]] for key, label in zip(keys, labels))
        os.replace(tmp, root / "all.csv")  # atomic: a half-written manifest never counts
        marker.write_text("done\n")
    for m in (6_000, 20_000):
        sub = subset_folder(root, m)
        if m >= n or (sub / ".complete").exists():
            continue
        taken = dict.fromkeys(range(10), 0)
        for key, label in zip(keys, labels):
            if taken[label] < m // 10:
                (sub / key).parent.mkdir(parents=True, exist_ok=True)
                if not (sub / key).exists():
                    os.link(root / key, sub / key)
                taken[label] += 1
        (sub / ".complete").write_text("done\n")
    return root


FOLDER_KEYS = ("item", "files", "images_per_s", "seconds", "listing_MiB", "peak_rss_MiB",
               "peak_pss_MiB")  # fmt: skip


def _folder_row(item: str, files: int, rate: float, **more: object) -> dict:
    """One row with every key of the section (blank where it does not apply)."""
    row = {k: "" for k in FOLDER_KEYS}
    row.update(item=item, files=files, images_per_s=round(rate, 1), **more)
    return row


def _rate_rows(source: Path, workers_list: tuple[int, ...], batch: int, batches: int) -> list:
    """images/s through the DataLoader (per worker count) and from memory, with and without
    two SimCLR views per image in the main process; the first batch (worker start) is untimed."""
    from contrastkit.data import SimCLRViews
    from contrastkit.data.image_folder import ImageFiles, image_batches, image_folder_loader

    files = ImageFiles(source, image_size=28, channels=1)
    g = torch.Generator().manual_seed(0)
    n = min(len(files), batch * (batches + 1))
    order = torch.randperm(len(files), generator=g)[:n]
    sampler = [order[i : i + batch].tolist() for i in range(0, n, batch)]
    views = SimCLRViews(size=28, channels=1)
    rows = []

    def timed(batches_iter, with_views: bool) -> float:
        it = iter(batches_iter)
        first = next(it)
        if with_views:
            views(first, n_views=2, seed=0)
        count, t0 = 0, time.perf_counter()
        for i, images in enumerate(it):
            if with_views:
                views(images, n_views=2, seed=i + 1)
            count += len(images)
        return count / (time.perf_counter() - t0)

    for with_views in (False, True):
        what = "decode + 2 views" if with_views else "decode"
        for workers in workers_list:
            loader = image_folder_loader(files, sampler, workers)
            rate = timed((b["images"] for b in loader), with_views)
            rows.append(_folder_row(f"folder, {workers} workers, {what}", len(files), rate))
            del loader
        index = torch.cat([b["index"] for b in image_batches(files, 1024)])  # every readable row
        memory = torch.zeros((len(files), *files.image_shape), dtype=torch.uint8)
        for b in image_batches(files, 1024):
            memory[b["index"]] = b["images"]
        assert len(index) == len(files)
        rate = timed((memory[torch.tensor(s)] for s in sampler), with_views)
        what = "index + 2 views" if with_views else "index"
        rows.append(_folder_row(f"in-memory uint8 tensor, {what}", len(files), rate))
    return rows


def epoch_memory(
    source: Path, workers: int = 2, batch: int = 256, limit: int | None = None
) -> dict:
    """Peak RSS / PSS (MiB, main + workers) over one shuffled epoch of ``source`` (or its first
    ``limit`` images)."""
    import psutil

    from contrastkit.data.image_folder import ImageFiles, image_folder_loader

    me = psutil.Process()
    before = me.memory_info().rss
    files = ImageFiles(source, image_size=28, channels=1)
    listed = me.memory_info().rss
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(files), generator=g)
    count = len(files) if limit is None else min(limit, len(files))
    sampler = [order[i : min(i + batch, count)].tolist() for i in range(0, count, batch)]
    peak = {"rss": 0, "pss": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            procs = [me, *me.children(recursive=True)]
            rss = pss = 0
            for p in procs:
                try:
                    info = p.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            stop.wait(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    seen = skipped = 0
    for b in image_folder_loader(files, sampler, workers):
        seen += len(b["images"])
        skipped += b["skipped_files"]
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    mib = 2**20
    if seen + skipped != count:
        raise RuntimeError(f"the epoch saw {seen} + {skipped} skipped of {count} files.")
    kind = "manifest" if source.suffix == ".csv" else "folder"
    span = "one epoch" if limit is None else f"first {count} images"
    return _folder_row(
        f"{kind}, {span}, {workers} workers (peak memory)",
        len(files),
        seen / seconds,
        seconds=round(seconds, 1),
        listing_MiB=round((listed - before) / mib, 1),
        peak_rss_MiB=round(peak["rss"] / mib, 1),
        peak_pss_MiB=round(peak["pss"] / mib, 1),
    )


def run_image_folder(
    sizes: tuple[int, ...] = (6_000, 20_000, 60_000),
    workers_list: tuple[int, ...] = (0, 1, 2),
    batch: int = 256,
    batches: int = 20,
    rss_workers: int = 2,
) -> dict:
    root = write_fashion_mnist_pngs(PNG_ROOT, 60_000)
    small = subset_folder(root, 6_000)
    rows = _rate_rows(small, workers_list, batch, batches)
    for row in rows:
        row["seconds"] = f"{batches} x {batch} images"

    def memory(source: Path, *extra: str) -> dict:  # a fresh process: its own peak
        out = subprocess.run(
            [sys.executable, __file__, "rss", str(source), "--workers", str(rss_workers), *extra],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])

    for n in sizes:
        rows.append(memory(root if n == 60_000 else subset_folder(root, n)))
    rows.append(memory(root / "all.csv"))
    rows.append(memory(root, "--limit", "6000"))
    return {
        "title": "Image folders streamed from disk (Fashion-MNIST as PNG files, 28x28, CPU)",
        "rows": rows,
        "notes": (
            f"PNG files under {PNG_ROOT} (60,000; smaller class folders are hard links to the "
            f"first files of each class); rates on the 6,000-file folder over {batches} shuffled "
            f"batches of {batch} after one untimed batch; views are SimCLRViews(28, channels=1) "
            "made in the main process. Memory: psutil RSS and PSS of the main process plus the "
            "DataLoader workers, peak over one shuffled epoch sampled every 0.1 s, each in a "
            "fresh process (RSS counts pages the workers share with the main process once per "
            "process; PSS splits them). 'first N images' rows stop there, to separate "
            "the folder's size from the epoch's length."
        ),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    folder = sub.add_parser("folder", help="the image-folder section")
    folder.add_argument("--sizes", type=int, nargs="+", default=[6_000, 20_000, 60_000])
    folder.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    folder.add_argument("--batches", type=int, default=20)
    folder.add_argument("--batch", type=int, default=256)
    rss = sub.add_parser("rss", help="one epoch's peak memory (run in a fresh process)")
    rss.add_argument("source")
    rss.add_argument("--workers", type=int, default=2)
    rss.add_argument("--limit", type=int, default=None, help="stop after this many images")
    args = parser.parse_args(argv)
    if args.cmd == "rss":
        print(json.dumps(epoch_memory(Path(args.source), args.workers, limit=args.limit)))
        return 0
    section = run_image_folder(tuple(args.sizes), tuple(args.workers), args.batch, args.batches)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import to_markdown

    print(to_markdown(section))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
