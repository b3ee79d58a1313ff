"""Audio data: decoding + log-mel throughput, an epoch's peak memory, log-mel parity with librosa.

Runnable alone (``python benchmarks/bench_audio_data.py all``) or from ``benchmarks/run.py
audio_data``. The clips are real speech: the packaged espeak-ng corpus
(:func:`contrastkit.data.speech.speech_folder`, 200 phrases x 3 voices = 600 clips, generated
once into the cache) cycled and written by soundfile as 20,000 16 kHz 16-bit WAV files under
``$CK_AUDIO_WAV`` (default ``/tmp/ck_audio_wav``; espeak itself makes ~35 clips/s here, so the
20,000 files are copies, each a whole real utterance) with ``first_<n>.csv`` manifests.

* rates: clips/s through :func:`contrastkit.data.audio_folder.audio_folder_loader` with 0, 1, 2
  workers (decode + crop/pad to 2 s), then :func:`contrastkit.data.audio.log_mel` on the batch in
  the main process, against the same clips indexed from an in-memory (N, L) tensor;
* memory: peak RSS and PSS (psutil, main process + workers, sampled every 0.1 s) over one
  shuffled epoch of 2,000 and of 20,000 files, each in a fresh process, plus the first 2,000
  clips of the 20,000 manifest (the folder's size apart from the epoch's length);
* parity: max |dB| between ``log_mel`` and librosa's ``melspectrogram`` + ``power_to_db`` on 64
  real clips, float64 and float32, two configs;
* ``--speech``: the time to generate the default corpus (1,000 phrases x 3 voices) in an empty
  cache.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

WAV_ROOT = Path(os.environ.get("CK_AUDIO_WAV", "/tmp/ck_audio_wav"))
RATE, CLIP_SECONDS = 16000, 2.0
KEYS = ("item", "files", "clips_per_s", "seconds", "listing_MiB", "peak_rss_MiB", "peak_pss_MiB")


def _row(item: str, files: int, rate: float | str, **more: object) -> dict:
    row = {k: "" for k in KEYS}
    row.update(
        item=item, files=files, clips_per_s=round(rate, 1) if isinstance(rate, float) else rate
    )
    row.update(more)
    return row


def write_wavs(root: Path = WAV_ROOT, n: int = 20_000) -> Path:
    """``root/wav/<i>.wav`` (n speech clips at 16 kHz) and ``root/first_<m>.csv`` manifests."""
    import soundfile

    from contrastkit.data.audio import load_audio
    from contrastkit.data.speech import speech_folder

    done = root / f"first_{n}.csv"
    if done.is_file():
        return root
    speech = speech_folder(phrases=200, voices_per_text=3)
    with open(speech / "manifest.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    clips = [load_audio(speech / r["path"], RATE)[0] for r in rows]
    (root / "wav").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        soundfile.write(
            root / "wav" / f"{i:05d}.wav", clips[i % len(clips)], RATE, subtype="PCM_16"
        )
    for m in sorted({2_000, n}):
        lines = ["path,text,speaker"] + [
            f'wav/{i:05d}.wav,"{rows[i % len(rows)]["text"]}",{rows[i % len(rows)]["speaker"]}'
            for i in range(m)
        ]
        (root / f"first_{m}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def rate_rows(manifest: Path, workers_list=(0, 1, 2), batch: int = 64, batches: int = 20) -> list:
    from contrastkit.data.audio import log_mel
    from contrastkit.data.audio_folder import AudioFiles, audio_batches, audio_folder_loader

    files = AudioFiles(manifest, sample_rate=RATE, clip_seconds=CLIP_SECONDS)
    g = torch.Generator().manual_seed(0)
    n = min(len(files), batch * (batches + 1))
    order = torch.randperm(len(files), generator=g)[:n]
    sampler = [order[i : i + batch].tolist() for i in range(0, n, batch)]

    def timed(waves_iter) -> float:
        it = iter(waves_iter)
        log_mel(next(it), RATE)  # untimed: worker start, first allocation
        count, t0 = 0, time.perf_counter()
        for waves in it:
            log_mel(waves, RATE)
            count += len(waves)
        return count / (time.perf_counter() - t0)

    rows = []
    for workers in workers_list:
        loader = audio_folder_loader(files, sampler, workers)
        rate = timed(b["audio"] for b in loader)
        rows.append(_row(f"folder, {workers} workers, decode + log-mel", len(files), rate))
        del loader
    memory = torch.zeros(len(files), files.clip_samples)
    for b in audio_batches(files, 256):
        memory[b["index"]] = b["audio"]
    rate = timed(memory[torch.tensor(s)] for s in sampler)
    rows.append(_row("in-memory (N, L) tensor, log-mel", len(files), rate))
    for row in rows:
        row["seconds"] = f"{batches} x {batch} clips"
    return rows


def epoch_memory(source: Path, workers: int = 2, batch: int = 64, limit: int | None = None) -> dict:
    import psutil

    from contrastkit.data.audio import log_mel
    from contrastkit.data.audio_folder import AudioFiles, audio_folder_loader

    me = psutil.Process()
    before = me.memory_info().rss
    files = AudioFiles(source, sample_rate=RATE, clip_seconds=CLIP_SECONDS)
    listed = me.memory_info().rss
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))
    count = len(files) if limit is None else min(limit, len(files))
    sampler = [order[i : min(i + batch, count)].tolist() for i in range(0, count, batch)]
    peak = {"rss": 0, "pss": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss = pss = 0
            for p in [me, *me.children(recursive=True)]:
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
    for b in audio_folder_loader(files, sampler, workers):
        log_mel(b["audio"], RATE)
        seen += len(b["audio"])
        skipped += b["skipped_files"]
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    if seen + skipped != count:
        raise RuntimeError(f"the epoch saw {seen} + {skipped} skipped of {count} files.")
    mib = 2**20
    span = "one epoch" if limit is None else f"first {count} clips"
    return _row(
        f"manifest, {span}, {workers} workers, decode + log-mel (peak memory)",
        len(files),
        seen / seconds,
        seconds=round(seconds, 1),
        listing_MiB=round((listed - before) / mib, 1),
        peak_rss_MiB=round(peak["rss"] / mib, 1),
        peak_pss_MiB=round(peak["pss"] / mib, 1),
    )


def parity_rows(root: Path, n: int = 64) -> list:
    import librosa

    from contrastkit.data.audio import load_audio, log_mel

    waves = [load_audio(root / "wav" / f"{i:05d}.wav")[0] for i in range(n)]
    rows = []
    for sr, n_fft, hop, n_mels in ((16000, 1024, 320, 64), (16000, 400, 160, 80)):
        for dtype in (np.float64, np.float32):
            worst = 0.0
            for w in waves:
                y = w.astype(dtype)
                ref = librosa.power_to_db(
                    librosa.feature.melspectrogram(
                        y=y, sr=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels, power=2.0
                    ),
                    ref=1.0,
                    amin=1e-10,
                    top_db=80.0,
                )
                got = log_mel(torch.from_numpy(y), sr, n_fft, hop, n_mels)[0].numpy()
                worst = max(worst, float(np.abs(got - ref).max()))
            rows.append(
                {
                    "config": f"sr={sr} n_fft={n_fft} hop={hop} n_mels={n_mels}",
                    "dtype": np.dtype(dtype).name,
                    "clips": n,
                    "max_abs_dB": f"{worst:.2e}",
                }
            )
    return rows


def speech_generation() -> dict:
    """Seconds to generate the default corpus into an empty cache (a fresh process)."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, CONTRASTKIT_CACHE=cache)
        code = (
            "import time; from contrastkit.data.speech import speech_folder, speech_phrases;"
            "t=time.perf_counter(); speech_phrases(1000); p=time.perf_counter()-t;"
            "t=time.perf_counter(); f=speech_folder(); g=time.perf_counter()-t;"
            "n=sum(1 for _ in (f/'clips').iterdir()); print(p, g, n)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
        )
        phrases_s, total_s, clips = out.stdout.split()
    return {
        "item": "speech corpus, default size, empty cache",
        "clips": int(clips),
        "seconds": round(float(total_s), 1),
        "of_which_reading_texts_s": round(float(phrases_s), 1),
        "clips_per_s": round(int(clips) / float(total_s), 1),
        "espeak_processes": os.cpu_count(),
    }


MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}
"""glibc's malloc raises its mmap threshold after each large free (up to 32 MiB), so the log-mel's
large intermediates (a (64, 513, 101) complex STFT) then come from the heap and fragment it: the
main process grew ~5 MiB a batch for ~100 batches with workers. A fixed 1 MiB threshold keeps
every large buffer mmapped and returned at once (measured: flat)."""


def _memory(source: Path, *extra: str, env: dict | None = None) -> dict:  # a fresh process
    out = subprocess.run(
        [sys.executable, __file__, "rss", str(source), *extra],
        check=True, capture_output=True, text=True, env=dict(os.environ, **(env or {})),
    )  # fmt: skip
    row = json.loads(out.stdout.strip().splitlines()[-1])
    if env:
        row["item"] += ", " + " ".join(f"{k}={v}" for k, v in env.items())
    return row


def run(speech: bool = False) -> list[dict]:
    root = write_wavs(WAV_ROOT, 20_000)
    rows = rate_rows(root / "first_2000.csv")
    rows.append(_memory(root / "first_2000.csv", env=MMAP_THRESHOLD))
    rows.append(_memory(root / "first_20000.csv", env=MMAP_THRESHOLD))
    rows.append(_memory(root / "first_20000.csv", "--limit", "2000", env=MMAP_THRESHOLD))
    rows.append(_memory(root / "first_2000.csv"))
    rows.append(_memory(root / "first_20000.csv"))
    sections = [
        {
            "title": "Audio folders streamed from disk (espeak-ng speech as 16 kHz WAV, CPU)",
            "rows": rows,
            "notes": (
                f"WAV files under {WAV_ROOT}: the 600 clips of the speech corpus (200 phrases x 3 "
                "voices, 0.3-2.8 s) cycled to 20,000 files by soundfile (16 kHz PCM_16); clips "
                f"cropped/padded to {CLIP_SECONDS} s; log_mel(sr=16000, n_fft=1024, hop=320, "
                "n_mels=64) on each batch in the main process. Rates over 20 shuffled batches of "
                "64 from the 2,000-file manifest after one untimed batch. Memory: psutil RSS and "
                "PSS of the main process plus 2 DataLoader workers, peak over one shuffled epoch, "
                "each in a fresh process; rows marked MALLOC_MMAP_THRESHOLD_ ran with glibc's mmap "
                "threshold fixed at 1 MiB (see MMAP_THRESHOLD: without it the main process's heap "
                "fragments under the log-mel's large buffers and its peak grows with the epoch's "
                "length up to a plateau, whatever the folder's size)."
            ),
        },
        {
            "title": "log_mel parity with librosa (melspectrogram + power_to_db, top_db=80)",
            "rows": parity_rows(root),
            "notes": "max |log_mel - librosa| in dB over every bin of 64 real speech clips.",
        },
    ]
    if speech:
        sections.append(
            {
                "title": "Generating the espeak-ng speech corpus",
                "rows": [speech_generation()],
                "notes": "speech_folder() defaults (1,000 phrases x 3 voices) into an empty cache.",
            }
        )
    return sections


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    everything = sub.add_parser("all", help="every section")
    everything.add_argument("--speech", action="store_true", help="also time corpus generation")
    rss = sub.add_parser("rss", help="one epoch's peak memory (run in a fresh process)")
    rss.add_argument("source")
    rss.add_argument("--workers", type=int, default=2)
    rss.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cmd == "rss":
        print(json.dumps(epoch_memory(Path(args.source), args.workers, limit=args.limit)))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import to_markdown

    for section in run(speech=args.speech):
        print(to_markdown(section), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
