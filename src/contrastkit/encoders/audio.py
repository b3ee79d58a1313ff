"""Audio towers: a small CNN over log-mel spectrograms, and any local Hugging Face audio model.

Every audio encoder maps ``waveform: (B, T)`` float mono samples at its ``sample_rate`` and an
optional ``mask: (B, T)`` bool (True on real samples, False on padding) to ``(B, out_features)``
embeddings, so a batch of clips of different lengths, padded to the longest, embeds each clip
from its own samples only. With ``projection_dim`` the tower ends in a linear projection and L2
normalisation (the audio side of a CLAP model, Elizalde et al. 2023,
https://arxiv.org/abs/2206.04769; Wu et al. 2023, https://arxiv.org/abs/2211.06687).

* ``audio_cnn`` (:class:`AudioCNN`): log-mel front end (:func:`contrastkit.data.audio.log_mel`,
  inside the module so ONNX export covers it) -> per-mel-bin BatchNorm -> VGG-style conv stages
  (PANNs' CNN layout, Kong et al. 2020, https://arxiv.org/abs/1912.10211) -> mean + max pooling
  over the valid frames. Trained from scratch.
* ``hf_audio`` (:class:`HFAudioEncoder`): a local transformers folder (Wav2Vec2, HuBERT, WavLM,
  Whisper's encoder, AST, CLAP's audio model, ...), its feature extractor's config honoured
  (sampling rate, normalisation, padding value, attention mask), mean pooling over the frames of
  the real samples. Nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.encoders.registry import register
from contrastkit.errors import ArgumentError


def check_waveform(waveform: object, mask: object = None) -> tuple[Tensor, Tensor]:
    """``(waveform (B, T) float, mask (B, T) bool)``; ``mask=None`` means every sample is real.

    >>> w, m = check_waveform(torch.zeros(2, 5))
    >>> w.shape, m.dtype, bool(m.all())
    (torch.Size([2, 5]), torch.bool, True)
    """
    if not isinstance(waveform, Tensor) or waveform.ndim != 2:
        shape = tuple(waveform.shape) if isinstance(waveform, Tensor) else type(waveform).__name__
        raise ValueError(
            f"waveform must be a (B, T) float tensor of mono samples, got {shape}; stack clips "
            "as rows (contrastkit.data.audio.crop_or_pad gives each a fixed length and a mask)."
        )
    if not waveform.is_floating_point():
        raise TypeError(f"waveform must be float samples in [-1, 1], got {waveform.dtype}.")
    if mask is None:
        return waveform, torch.ones(waveform.shape, dtype=torch.bool, device=waveform.device)
    if not isinstance(mask, Tensor) or mask.shape != waveform.shape:
        shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(
            f"mask must be a (B, T) bool tensor shaped like waveform {tuple(waveform.shape)}, "
            f"got {shape}."
        )
    return waveform, mask.bool()


def frame_mask(mask: Tensor, frames: int) -> Tensor:
    """Which of ``frames`` evenly spaced frames cover real samples: frame f of a clip with L real
    samples out of T is real when ``f < ceil(L * frames / T)`` (padding is at the end).

    Args:
        mask: (B, T) bool, True on real samples.
        frames: F, frames the front end or model made of the T samples.

    Returns:
        (B, F) bool; every clip keeps at least one frame.

    >>> frame_mask(torch.tensor([[True] * 4 + [False] * 4]), 4)
    tensor([[ True,  True, False, False]])
    """
    lengths = mask.sum(1).to(torch.float32)  # (B,)
    n = torch.ceil(lengths * frames / mask.shape[1]).clamp_min(1)  # (B,)
    return torch.arange(frames, device=mask.device)[None, :] < n[:, None]  # (B, F)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x: (B, F, D)`` over the frames where ``mask: (B, F)`` is True -> (B, D).

    >>> masked_mean(torch.tensor([[[1.0], [3.0], [9.0]]]), torch.tensor([[True, True, False]]))
    tensor([[2.]])
    """
    m = mask.unsqueeze(-1).to(x.dtype)  # (B, F, 1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class _Projection(nn.Module):
    """Optional ``Linear(F, D)`` + L2 normalisation at the end of an audio tower."""

    def __init__(self, in_features: int, projection_dim: int | None) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, projection_dim) if projection_dim else None
        self.out_features = int(projection_dim) if projection_dim else in_features

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x), dim=-1) if self.linear is not None else x


@register("audio_cnn", inputs="audio")
class AudioCNN(nn.Module):
    """``(waveform (B, T), mask (B, T)) -> (B, out_features)``: log-mel, then a small CNN.

    The log-mel spectrogram (B, n_mels, frames) is normalised per mel bin by BatchNorm (PANNs'
    ``bn0``), padded frames set to zero, then ``len(widths)`` stages of two 3x3 conv-BN-ReLU
    layers, each but the last followed by 2x2 average pooling; the feature map is averaged over
    frequency and pooled over the real frames by mean + max (``out_features = widths[-1]``, or
    ``projection_dim`` with a projection, whose output is L2-normalised).

    Args:
        sample_rate: the rate the waveform is given at (Hz).
        n_mels, n_fft, hop_length, f_min, f_max: the log-mel front end
            (:func:`contrastkit.data.audio.log_mel`).
        width: w, channels of the first stage; stages double it up to 8w.
        stages: conv stages (1 to 4).
        projection_dim: D of a final linear projection + L2 normalisation (None: no projection).

    >>> enc = AudioCNN(sample_rate=8000, n_mels=32, n_fft=256, hop_length=80, width=8)
    >>> enc(torch.randn(2, 4000), torch.ones(2, 4000, dtype=torch.bool)).shape
    torch.Size([2, 64])
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 64,
        n_fft: int = 1024,
        hop_length: int = 320,
        f_min: float = 0.0,
        f_max: float | None = None,
        width: int = 16,
        stages: int = 4,
        projection_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= int(stages) <= 4:
            raise ValueError(f"stages must be 1 to 4, got {stages!r}.")
        if int(sample_rate) <= 0 or int(n_mels) <= 0 or int(width) <= 0:
            raise ValueError(
                f"sample_rate, n_mels and width must be > 0, got {sample_rate}, {n_mels}, {width}."
            )
        self.sample_rate, self.n_mels, self.n_fft = int(sample_rate), int(n_mels), int(n_fft)
        self.hop_length, self.f_min, self.f_max = int(hop_length), float(f_min), f_max
        self.bn0 = nn.BatchNorm1d(self.n_mels)
        widths = [int(width) * 2**i for i in range(int(stages))]
        layers: list[nn.Module] = []
        cin = 1
        for i, w in enumerate(widths):
            layers += [_conv_bn(cin, w), _conv_bn(w, w)]
            if i < len(widths) - 1:
                layers.append(nn.AvgPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.projection = _Projection(widths[-1], projection_dim)
        self.out_features = self.projection.out_features

    def log_mel(self, waveform: Tensor) -> Tensor:
        """(B, T) -> (B, n_mels, frames) in dB: :func:`contrastkit.data.audio.log_mel`, or, while
        ONNX export traces the module (``torch.stft``'s complex output does not export), the
        same STFT as a strided convolution with the windowed DFT basis (:meth:`dft_log_mel`)."""
        from contrastkit.data.audio import log_mel

        if torch.onnx.is_in_onnx_export():
            return self.dft_log_mel(waveform)
        return log_mel(
            waveform,
            self.sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            f_min=self.f_min,
            f_max=self.f_max,
        )

    def dft_log_mel(self, waveform: Tensor) -> Tensor:
        """:func:`~contrastkit.data.audio.log_mel` with the STFT written as ``conv1d`` over the
        zero-padded waveform (centred frames), kernels ``hann(n) * cos(2 pi k n / N)`` and
        ``hann(n) * sin(...)``: real arithmetic only, so it exports to ONNX.
        (B, T) -> (B, n_mels, 1 + T // hop_length)."""
        from contrastkit.data.audio import _hann_cpu, mel_filterbank, power_to_db

        n = self.n_fft
        k = torch.arange(n // 2 + 1, dtype=torch.float64)[:, None]  # (K, 1)
        angle = 2 * torch.pi * k * torch.arange(n, dtype=torch.float64)[None, :] / n  # (K, N)
        window = _hann_cpu(n)[None, :]  # (1, N)
        basis = torch.cat([window * torch.cos(angle), window * torch.sin(angle)])  # (2K, N)
        basis = basis.to(waveform.dtype).unsqueeze(1)  # (2K, 1, N)
        x = F.pad(waveform.unsqueeze(1), (n // 2, n // 2))  # (B, 1, T + N)
        spec = F.conv1d(x, basis, stride=self.hop_length)  # (B, 2K, F)
        real, imag = spec.chunk(2, dim=1)  # (B, K, F) each
        f_hi = self.sample_rate / 2 if self.f_max is None else float(self.f_max)
        fb = mel_filterbank(
            self.sample_rate, n, self.n_mels, self.f_min, f_hi, dtype=waveform.dtype
        )  # (M, K)
        return power_to_db(torch.matmul(fb, real.square() + imag.square()))  # (B, M, F)

    def forward(self, waveform: Tensor, mask: Tensor | None = None) -> Tensor:
        waveform, mask = check_waveform(waveform, mask)
        waveform = waveform.float() * mask  # padding is silence, whatever the batch holds there
        spec = self.log_mel(waveform)  # (B, M, F)
        valid = frame_mask(mask, spec.shape[-1])  # (B, F)
        spec = self.bn0(spec) * valid[:, None, :]  # (B, M, F), padded frames at the mean
        x = self.features(spec.unsqueeze(1))  # (B, C, M', F')
        x = x.mean(2).transpose(1, 2)  # (B, F', C)
        valid = frame_mask(mask, x.shape[1])  # (B, F')
        mean = masked_mean(x, valid)  # (B, C)
        peak = x.masked_fill(~valid[..., None], float("-inf")).amax(1)  # (B, C)
        return self.projection(mean + peak)


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - transformers is in the text extra
        raise ImportError("hf_audio needs transformers: pip install transformers") from err
    return transformers


# feature extractors that turn samples into spectrograms (in numpy): the model's input is not
# the waveform, so the graph starts after them (ONNX export covers raw-waveform models only)
_SPECTROGRAM_INPUTS = ("input_features", "input_values_spectrogram")


@register("hf_audio", inputs="audio", pretrained=True)
class HFAudioEncoder(nn.Module):
    """Any local Hugging Face audio model folder as an audio tower:
    ``(waveform (B, T), mask (B, T)) -> (B, hidden_size)`` (or ``projection_dim``).

    The folder's feature extractor (``preprocessor_config.json``) decides what the model sees:

    * raw-waveform models (Wav2Vec2, HuBERT, WavLM, Data2VecAudio: ``input_values``): its
      ``do_normalize`` (zero mean, unit variance over each clip's real samples, as
      ``Wav2Vec2FeatureExtractor`` computes it), ``padding_value`` on padding, and an
      ``attention_mask`` only when ``return_attention_mask`` is set (models with group-norm
      feature encoders are trained without one); all in torch, so ONNX export traces it;
    * spectrogram models (Whisper, AST, CLAP: ``input_features``): the feature extractor itself,
      on each clip's real samples (Whisper's encoder takes the padded 30 s window it was built
      for; an encoder-decoder folder contributes its encoder only).

    The last hidden state is mean-pooled over the frames that cover real samples; frames of
    padding never enter the embedding. ``sample_rate`` is the extractor's ``sampling_rate``: the
    task resamples clips to it.

    Args:
        path: a local folder written by ``save_pretrained`` (config.json, model.safetensors,
            preprocessor_config.json).
        projection_dim: D of a final linear projection + L2 normalisation (None: none).
        freeze: keep the transformer's weights fixed (only the projection trains).

    >>> HFAudioEncoder("/no/such/folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: path '/no/such/folder' is not a folder; pass a local Hugging Face audio model folder (save_pretrained writes one; nothing is downloaded).
    """

    def __init__(
        self, path: str | Path, projection_dim: int | None = None, freeze: bool = False
    ) -> None:
        super().__init__()
        from contrastkit.encoders.text import (
            SAFE_LOADING,
            check_safetensors_folder,
            quiet_transformers,
        )

        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"path {str(path)!r} is not a folder; pass a local Hugging Face audio model "
                "folder (save_pretrained writes one; nothing is downloaded)."
            )
        tf = _transformers()
        check_safetensors_folder(folder)
        try:
            extractor = tf.AutoFeatureExtractor.from_pretrained(str(folder))
            with quiet_transformers(tf):
                model = tf.AutoModel.from_pretrained(str(folder), **SAFE_LOADING)
        except Exception as err:  # OSError, ValueError, KeyError: not an audio model folder
            reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise ValueError(
                f"path {str(folder)!r} is not a Hugging Face audio model folder (needs "
                f"config.json, model.safetensors and preprocessor_config.json of an audio "
                f"model; {type(err).__name__}: {reason})."
            ) from None
        names = list(getattr(extractor, "model_input_names", []) or [])
        rate = getattr(extractor, "sampling_rate", None)
        if not names or rate is None:
            raise ValueError(
                f"path {str(folder)!r} is not a Hugging Face audio model folder: its "
                f"preprocessor ({type(extractor).__name__}) has no sampling_rate; pass the "
                "folder of an audio model (Wav2Vec2, HuBERT, Whisper, AST, CLAP)."
            )
        if hasattr(model, "get_encoder") and getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()  # Whisper: the audio encoder only
        elif hasattr(model, "audio_model"):  # CLAP: the audio tower of the two
            model = model.audio_model
        self.model, self.extractor = model, extractor
        self.path, self.input_name = str(folder), names[0]
        self.raw_waveform = (
            self.input_name == "input_values"
            and hasattr(extractor, "do_normalize")
            and not hasattr(extractor, "num_mel_bins")
        )
        self.onnx_exportable = self.raw_waveform  # spectrogram extractors run in numpy
        self.sample_rate = int(rate)
        self.do_normalize = bool(getattr(extractor, "do_normalize", False))
        self.padding_value = float(getattr(extractor, "padding_value", 0.0))
        self.use_attention_mask = bool(getattr(extractor, "return_attention_mask", False))
        config = getattr(model, "config", None)
        hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
        if hidden is None:
            raise ValueError(
                f"path {str(folder)!r}: the model's config names no hidden_size or d_model; "
                "pass the folder of an audio encoder."
            )
        if freeze:
            for p in self.model.parameters():
                p.requires_grad_(False)
        self.projection = _Projection(int(hidden), projection_dim)
        self.out_features = self.projection.out_features

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _normalise(self, waveform: Tensor, mask: Tensor) -> Tensor:
        """Wav2Vec2FeatureExtractor's zero-mean unit-variance over each clip's real samples
        (``(x - mean) / sqrt(var + 1e-7)``), padding set to ``padding_value``."""
        m = mask.to(waveform.dtype)  # (B, T)
        if self.do_normalize:
            n = m.sum(1, keepdim=True).clamp_min(1.0)  # (B, 1)
            mean = (waveform * m).sum(1, keepdim=True) / n
            var = (((waveform - mean) * m) ** 2).sum(1, keepdim=True) / n
            waveform = (waveform - mean) / torch.sqrt(var + 1e-7)
        return waveform * m + self.padding_value * (1 - m)

    def _spectrogram_inputs(self, waveform: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """The feature extractor over each clip's real samples (numpy), as model inputs."""
        clips = [w[m].detach().cpu().float().numpy() for w, m in zip(waveform, mask, strict=True)]
        out = self.extractor(
            clips, sampling_rate=self.sample_rate, return_tensors="pt", return_attention_mask=True
        )
        inputs = {self.input_name: out[self.input_name].to(self.device)}
        return {**inputs, "_frame_mask": out.get("attention_mask")}

    def forward(self, waveform: Tensor, mask: Tensor | None = None) -> Tensor:
        waveform, mask = check_waveform(waveform, mask)
        if self.raw_waveform:
            inputs: dict[str, Any] = {"input_values": self._normalise(waveform.float(), mask)}
            if self.use_attention_mask:
                inputs["attention_mask"] = mask.long()
            frames_of = mask
        else:
            inputs = self._spectrogram_inputs(waveform, mask)
            extracted = inputs.pop("_frame_mask")
            # the extractor's own mask (Whisper: its frames) when it gives one, else the samples
            frames_of = extracted.bool() if extracted is not None else mask
        hidden = self.model(**inputs).last_hidden_state  # (B, F, H)
        valid = frame_mask(frames_of.to(hidden.device), hidden.shape[1])  # (B, F)
        return self.projection(masked_mean(hidden, valid))

    def extra_repr(self) -> str:
        return (
            f"path={self.path!r}, sample_rate={self.sample_rate}, input={self.input_name}, "
            f"out_features={self.out_features}"
        )


def hf_audio_path(path: object) -> str:
    """``model.options.path`` of ``hf_audio``, checked: a non-empty string."""
    if not isinstance(path, str | Path) or not str(path):
        raise ArgumentError(
            f"{{path}} must be a local audio model folder for the encoder 'hf_audio', got "
            f"{path!r}; e.g. {{path}}=/models/wav2vec2-base.",
            "path",
        )
    return str(path)


def clip_frames(seconds: float, sample_rate: int) -> int:
    """Samples in ``seconds`` at ``sample_rate``, at least 1.

    >>> clip_frames(1.5, 16000)
    24000
    """
    return max(1, math.floor(seconds * sample_rate))


class AudioTextModel(nn.Module):
    """CLAP's two towers: ``(waveform (B, T), mask (B, T), texts) -> (audio (B, D), text (B, D))``,
    both L2-normalised.

    The audio tower ends in its own projection to D (``projection_dim``, as registered, so the
    exported audio encoder is the whole audio side); the text tower is followed by a linear
    projection to D here.

    Args:
        audio_encoder: an audio tower with ``out_features == embedding_dim`` whose output is
            normalised (e.g. ``AudioCNN(projection_dim=D)``).
        text_encoder: texts -> (B, F_txt) (e.g. :class:`~contrastkit.encoders.TextEncoder`).
        embedding_dim: D.

    >>> towers = AudioTextModel(AudioCNN(8000, 16, 256, 80, width=4, projection_dim=6),
    ...                         nn.EmbeddingBag(10, 5), 6, text_dim=5)
    >>> a, t = towers(torch.randn(2, 800), None, torch.tensor([[1, 2], [3, 4]]))
    >>> a.shape, t.shape
    (torch.Size([2, 6]), torch.Size([2, 6]))
    """

    def __init__(
        self,
        audio_encoder: nn.Module,
        text_encoder: nn.Module,
        embedding_dim: int,
        text_dim: int | None = None,
    ) -> None:
        super().__init__()
        if int(getattr(audio_encoder, "out_features", -1)) != int(embedding_dim):
            raise ValueError(
                f"audio_encoder gives {getattr(audio_encoder, 'out_features', None)} features, "
                f"embedding_dim is {embedding_dim}; build it with projection_dim={embedding_dim}."
            )
        width = text_dim if text_dim is not None else getattr(text_encoder, "out_features", None)
        if width is None:
            raise ValueError("text_encoder has no out_features; pass text_dim= (its width).")
        self.audio_encoder, self.text_encoder = audio_encoder, text_encoder
        self.text_projection = nn.Linear(int(width), int(embedding_dim))
        self.out_features = int(embedding_dim)

    def encode_audio(self, waveform: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, D) normalised audio embeddings."""
        return F.normalize(self.audio_encoder(waveform, mask), dim=-1)

    def encode_text(self, texts: Any) -> Tensor:
        """(B, D) normalised text embeddings."""
        return F.normalize(self.text_projection(self.text_encoder(texts)), dim=-1)

    def forward(self, waveform: Tensor, mask: Tensor | None, texts: Any) -> tuple[Tensor, Tensor]:
        return self.encode_audio(waveform, mask), self.encode_text(texts)
