"""A folder of WAV tones for the audio tests: 6 "words" (pitches) spoken by 3 "speakers"
(a pitch shift and a length each), a manifest (path, text, label, speaker), and a text file
named ``notes.wav`` for the decoders to refuse."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

RATE = 8000
WORDS = ["low", "middle", "high", "rising", "falling", "pulsing"]
SPEAKERS = ["ann", "bob", "cid"]


def tone(word: int, speaker: int, rng: np.random.Generator) -> np.ndarray:
    """One clip (T,) float32 at :data:`RATE`: a sine at ``200 (1 + word) (1 + 0.05 speaker)`` Hz,
    ``0.4 + 0.1 speaker`` seconds long, with a little noise."""
    seconds = 0.4 + 0.1 * speaker
    t = np.arange(int(seconds * RATE)) / RATE
    f = 200.0 * (1 + word) * (1 + 0.05 * speaker)
    return (0.3 * np.sin(2 * np.pi * f * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def write_tones(root: Path) -> Path:
    """18 clips (6 tones x 3 speakers) in ``root``, ``manifest.csv`` and ``notes.wav``."""
    import soundfile

    rng = np.random.default_rng(0)
    rows = []
    for w, word in enumerate(WORDS):
        for s, speaker in enumerate(SPEAKERS):
            name = f"{word}_{speaker}.wav"
            soundfile.write(root / name, tone(w, s, rng), RATE)
            kind = "tone" if w % 2 else "sound"
            rows.append([name, f"a {word} {kind}", kind, speaker])
    with open(root / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "text", "label", "speaker"], *rows])
    (root / "notes.wav").write_text("this is not audio")
    return root
