"""A packaged speech corpus made offline with espeak-ng: short English phrases, many voices.

**Texts**: short phrases from the dictionaries Debian ships (``wordnet-base``, ``dict-foldoc``):
WordNet lemmas (``"physical entity"``), WordNet glosses of at most :data:`MAX_WORDS` words
(``"a domesticated carnivorous mammal"``) and FOLDOC headwords (``"exclamation mark"``), kept
when they are plain words (letters, spaces, hyphens, apostrophes; 2-48 characters),
deduplicated case-insensitively, then ordered by ``crc32(f"order:{seed}:{text}")`` (a hash
independent of the split's); ``phrases`` takes
the first of that order, an equal mix of the three kinds.

**Voices** (the speakers): an espeak-ng voice is English (``en``) + a variant of
:data:`VARIANTS` (those the installed espeak-ng has) + a pitch of :data:`PITCHES` + a rate of
:data:`RATES` words a minute: ``espeak-ng -v en+VARIANT -p PITCH -s RATE -w clip.wav TEXT``. A
pool of ``speakers`` voices is drawn from that grid with a seeded generator; each phrase is
spoken by ``voices_per_text`` of them (seeded). The speaker id (``"m3_p50_s160"``) makes speaker
verification possible; the variant family is the label (``"m3"``).

**Split by text**: a phrase is held out when ``crc32(f"{seed}:{text}") < test_fraction * 2**32``
(:func:`contrastkit.data._common.held_out_mask`), so no held-out text is ever spoken in training,
by any voice. Add noise at training time (:func:`contrastkit.data.audio_views.add_noise`).

**Cache**: the clips (22,050 Hz mono 16-bit WAV, as espeak-ng writes them) and ``manifest.csv``
(``path,text,label,speaker,kind``) are generated on first use under
``cache_dir()/speech/<key>/`` (the key hashes the size knobs, the seed and espeak-ng's version),
by ``os.cpu_count()`` espeak-ng processes at a time, into a temporary folder renamed into place
when complete (:func:`contrastkit.atomic.atomic_folder`), under an exclusive lock so that
processes asking at once generate it once. The default (1,000 phrases x 3 voices = 3,000 clips,
~5 MB a minute of speech...) takes about a minute on 2 cores (measured in notes/audio-data.md);
``phrases`` and ``voices_per_text`` are the size knobs.

>>> ds = load_speech("test", phrases=40)  # doctest: +SKIP
>>> ds[0]["audio"].shape, ds.texts[0], ds.speaker_names[ds.speakers[0]]  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import re
import shutil
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from contrastkit.data._common import cache_dir, check_fraction, check_split

__all__ = [
    "MAX_WORDS",
    "PITCHES",
    "RATES",
    "VARIANTS",
    "export_speech",
    "load_speech",
    "speech_folder",
    "speech_phrases",
]

VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
    "klatt3", "croak", "Alex", "Andy", "Annie", "Jacky", "linda", "max", "steph", "edward",
)  # fmt: skip
"""espeak-ng voice variants the voices are drawn from (those installed are used)."""
PITCHES = (30, 45, 60, 75)
"""espeak-ng pitches (``-p``, 0-99)."""
RATES = (130, 155, 180, 205)
"""espeak-ng speaking rates (``-s``, words per minute)."""
MAX_WORDS = 6
_PLAIN = re.compile(r"^[A-Za-z][A-Za-z' -]{1,47}$")
_KINDS = ("wordnet lemma", "wordnet gloss", "foldoc term")
_FORMAT = 1  # bump when the phrase or voice selection changes (a new cache key)


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        from contrastkit.data._common import DataNotFoundError

        raise DataNotFoundError(
            "espeak-ng not found on PATH: install it with `sudo apt-get install -y espeak-ng` "
            "(or `make setup`) to generate the speech corpus."
        )
    return exe


def _espeak_version(exe: str) -> str:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    return " ".join(out.split())


def _installed_variants(exe: str) -> list[str]:
    out = subprocess.run(
        [exe, "--voices=variant"], capture_output=True, text=True, check=False
    ).stdout
    have = {
        line.split()[4].removeprefix("!v/")
        for line in out.splitlines()[1:]
        if len(line.split()) >= 5
    }
    return [v for v in VARIANTS if v in have]


def _plain(text: str) -> str | None:
    text = " ".join(text.replace("_", " ").split())
    if not _PLAIN.match(text) or len(text.split()) > MAX_WORDS:
        return None
    return text


@functools.lru_cache(maxsize=1)
def _plain_texts() -> dict[str, frozenset[str]]:
    """The plain short texts of each kind (read once per process: WordNet takes seconds)."""
    from contrastkit.data.foldoc import load_foldoc
    from contrastkit.data.wordnet import load_wordnet

    wordnet = load_wordnet("lemma_gloss", split="all")
    sources = {
        "wordnet lemma": wordnet.query,
        "wordnet gloss": wordnet.positive,
        "foldoc term": load_foldoc("all").query,
    }
    return {kind: frozenset(t for t in map(_plain, texts) if t) for kind, texts in sources.items()}


def speech_phrases(phrases: int = 1000, seed: int = 0) -> list[tuple[str, str]]:
    """``phrases`` (text, kind) pairs: WordNet lemmas, short WordNet glosses and FOLDOC terms in
    equal shares (fewer when a source runs out), each text once (case-insensitive), in the
    seeded hash order (so a larger ``phrases`` extends a smaller one's list per kind).

    Raises:
        DataNotFoundError: WordNet (``wordnet-base``) or FOLDOC (``dict-foldoc``) is missing.
    """
    if not isinstance(phrases, int) or isinstance(phrases, bool) or phrases < 1:
        raise ValueError(
            f"phrases must be an int >= 1 (texts to speak), got {phrases!r}; e.g. 1000."
        )
    seen: set[str] = set()
    per_kind = {
        kind: sorted(texts, key=lambda t: (zlib.crc32(f"order:{seed}:{t}".encode()), t))
        for kind, texts in _plain_texts().items()
    }
    out: list[tuple[str, str]] = []
    cursors = dict.fromkeys(_KINDS, 0)
    while len(out) < phrases and any(cursors[k] < len(per_kind[k]) for k in _KINDS):
        for kind in _KINDS:  # round robin: equal shares
            while cursors[kind] < len(per_kind[kind]):
                text = per_kind[kind][cursors[kind]]
                cursors[kind] += 1
                if text.lower() not in seen:
                    seen.add(text.lower())
                    out.append((text, kind))
                    break
            if len(out) >= phrases:
                break
    return out


def _plan(
    phrases: int, voices_per_text: int, speakers: int, seed: int, variants: list[str]
) -> list[tuple[str, str, str, str]]:
    """(file name, text, kind, voice) per clip, deterministic."""
    grid = [f"{v}_p{p}_s{s}" for v in variants for p in PITCHES for s in RATES]
    rng = random.Random(f"speech:{seed}")
    pool = rng.sample(grid, min(speakers, len(grid)))
    clips = []
    for i, (text, kind) in enumerate(speech_phrases(phrases, seed)):
        for j, voice in enumerate(rng.sample(pool, min(voices_per_text, len(pool)))):
            clips.append((f"clips/{i:05d}_{j}.wav", text, kind, voice))
    return clips


def _speak(exe: str, voice: str, text: str, out: Path) -> None:
    variant, pitch, rate = voice.rsplit("_", 2)
    cmd = [exe, "-v", f"en+{variant}", "-p", pitch[1:], "-s", rate[1:], "-w", str(out), "--", text]
    done = subprocess.run(cmd, capture_output=True, check=False, timeout=60)
    if done.returncode != 0 or not out.is_file() or out.stat().st_size <= 44:
        raise RuntimeError(
            f"espeak-ng failed on {text!r} with voice {voice}: {done.stderr.decode(errors='replace').strip()}"
        )


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def speech_folder(
    phrases: int = 1000,
    voices_per_text: int = 3,
    speakers: int = 48,
    seed: int = 0,
    *,
    workers: int | None = None,
) -> Path:
    """The cached corpus folder (``manifest.csv`` + ``clips/*.wav``), generated on first use.

    Args:
        phrases: texts to speak (the size knob; clips = ``phrases * voices_per_text``).
        voices_per_text: voices speaking each text.
        speakers: size of the voice pool (at most ``len(installed VARIANTS) * 16``).
        seed: picks the phrases, the voice pool and who speaks what.
        workers: espeak-ng processes at once (default ``os.cpu_count()``).
    """
    from contrastkit.atomic import atomic_folder, exclusive_lock

    for arg, value in (("voices_per_text", voices_per_text), ("speakers", speakers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1, got {value!r}.")
    exe = _espeak()
    variants = _installed_variants(exe)
    if not variants:
        raise RuntimeError(
            f"espeak-ng at {exe} has none of the voice variants {VARIANTS[:4]}...; reinstall espeak-ng."
        )
    tag = hashlib.sha256(
        repr(
            (
                _FORMAT,
                phrases,
                voices_per_text,
                speakers,
                seed,
                variants,
                PITCHES,
                RATES,
                MAX_WORDS,
                _espeak_version(exe),
            )
        ).encode()
    ).hexdigest()[:16]
    final = cache_dir() / "speech" / f"speech_{phrases}x{voices_per_text}_{tag}"
    if (final / "manifest.csv").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(
        final.parent / f"{final.name}.lock", what=f"generation of {final}", wait=True
    ):
        if (final / "manifest.csv").is_file():  # another process made it while we waited
            return final
        clips = _plan(phrases, voices_per_text, speakers, seed, variants)
        with atomic_folder(final) as writer:
            (writer.path / "clips").mkdir()
            with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
                list(pool.map(lambda c: _speak(exe, c[3], c[1], writer.path / c[0]), clips))
            lines = ["path,text,label,speaker,kind"]
            lines += [
                f"{name},{_csv_cell(text)},{voice.split('_')[0]},{voice},{kind}"
                for name, text, kind, voice in clips
            ]
            writer.write_bytes("manifest.csv", ("\n".join(lines) + "\n").encode())
    return final


def load_speech(
    split: str = "train",
    *,
    phrases: int = 1000,
    voices_per_text: int = 3,
    speakers: int = 48,
    seed: int = 0,
    test_fraction: float = 0.1,
    sample_rate: int = 16000,
    clip_seconds: float = 3.0,
    crop: str = "center",
):  # -> AudioFiles
    """The ``split`` of the speech corpus as an :class:`~contrastkit.data.audio_folder.AudioFiles`
    (split by text: no held-out phrase is spoken in training; ``speakers`` are the voices,
    ``labels`` the variant families, ``texts`` the phrases). The clips last 0.3-2.8 s at the
    default size, so ``clip_seconds=3.0`` pads rather than crops."""
    from contrastkit.data.audio_folder import AudioFiles

    check_split(split)
    check_fraction(test_fraction)
    folder = speech_folder(phrases, voices_per_text, speakers, seed)
    return AudioFiles(
        folder / "manifest.csv", sample_rate=sample_rate, clip_seconds=clip_seconds, split=split,
        test_fraction=test_fraction, seed=seed, split_by="text", crop=crop,
    )  # fmt: skip


def export_speech(
    dest: str | os.PathLike,
    *,
    phrases: int = 1000,
    voices_per_text: int = 3,
    speakers: int = 48,
    seed: int = 0,
    test_fraction: float = 0.1,
) -> Path:
    """Write the corpus to ``dest``: ``clips/*.wav``, ``manifest.csv`` (``path,text,label,speaker,
    kind,split``; paths relative to it, so ``data.dataset: audio_folder`` with ``data.root:
    DEST/manifest.csv`` reads it), atomically (an earlier export is replaced)."""
    from contrastkit.atomic import atomic_folder
    from contrastkit.data._common import held_out_mask
    from contrastkit.data.audio_folder import read_audio_manifest

    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"{dest} is a file; pass a folder to write the corpus into.")
    above = next((p for p in dest.parents if p.exists()), None)
    if above is not None and not above.is_dir():  # e.g. DEST under /dev/null
        raise NotADirectoryError(
            f"{dest}: {above} is not a folder, so nothing can be written under it; pass a folder "
            "path whose existing part is a folder."
        )
    if dest.is_dir() and any(dest.iterdir()) and not (dest / "manifest.csv").is_file():
        raise ValueError(
            f"{dest} is not empty and not an earlier export; pass a new or empty folder."
        )
    check_fraction(test_fraction)
    folder = speech_folder(phrases, voices_per_text, speakers, seed)
    rows = read_audio_manifest(folder / "manifest.csv")
    test = held_out_mask(rows["texts"], test_fraction, seed).tolist()
    with open(folder / "manifest.csv", encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    out = [lines[0] + ",split"] + [
        f"{line},{'test' if t else 'train'}" for line, t in zip(lines[1:], test)
    ]
    with atomic_folder(dest) as writer:
        shutil.copytree(folder / "clips", writer.path / "clips")
        writer.write_bytes("manifest.csv", ("\n".join(out) + "\n").encode())
    return dest
