"""Audio in and out of the service: uploads decoded to the model's clip, corpus clips as bytes.

Shapes: an upload -> ``(clip (S,) float32, mask (S,) bool)`` at the run's sample rate, S the
run's clip length (centre crop or zero pad, as ``contrastkit search`` reads a WAV query).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from contrastkit.serve.errors import BadInput

__all__ = ["FORMATS", "MAX_SECONDS", "audio_media_type", "decode_audio"]

FORMATS = "WAV, FLAC, OGG or MP3"
MAX_SECONDS = 600.0  # an upload longer than this is refused from its header, undecoded
_MEDIA = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg",
          ".opus": "audio/ogg", ".mp3": "audio/mpeg"}  # fmt: skip


def decode_audio(data: bytes, sample_rate: int, clip_samples: int, field: str) -> Any:
    """Encoded audio bytes -> ``(clip (S,), mask (S,))`` mono at ``sample_rate``, ``S =
    clip_samples``; :class:`BadInput` naming ``field`` for bytes that are not audio (a text file
    named ``.wav``, an empty upload) or a clip over :data:`MAX_SECONDS` (read from its header).

    >>> decode_audio(b"not audio", 8000, 80, "file")
    Traceback (most recent call last):
    ...
    contrastkit.serve.errors.BadInput: file: got b'not audio'; allowed: the bytes of a WAV, FLAC, OGG or MP3 file
    """
    import soundfile
    import torch

    from contrastkit.data.audio import AudioError, crop_or_pad, load_audio

    allowed = f"the bytes of a {FORMATS} file"
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception:  # libsndfile's own errors: not a format it reads
        raise BadInput(field, data[:16], allowed) from None
    if info.samplerate and info.frames / info.samplerate > MAX_SECONDS:
        seconds = f"{info.frames / info.samplerate:.0f} seconds"
        raise BadInput(field, seconds, f"a {FORMATS} clip of at most {MAX_SECONDS:.0f} seconds")
    try:
        wave, _ = load_audio(data, sample_rate=sample_rate, name=field)  # (T,) float32
    except AudioError:
        raise BadInput(field, data[:16], allowed) from None
    clip, mask = crop_or_pad(torch.from_numpy(wave), clip_samples)  # (S,) each
    return clip.float(), mask.bool()


def audio_media_type(path: str | Path) -> str:
    """The ``Content-Type`` a browser plays a corpus clip as, from its suffix.

    >>> audio_media_type("a/b.flac")
    'audio/flac'
    """
    return _MEDIA.get(Path(path).suffix.lower(), "application/octet-stream")
