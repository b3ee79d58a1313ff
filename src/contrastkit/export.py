"""Export a trained run: a sentence-transformers folder, ONNX graphs or safetensors + config.

``export_run(run, out, format)`` reads the run through :func:`contrastkit.train.run.load_run`
(its latest weights) and writes ``out``:

* ``sentence-transformers`` (text towers): a folder ``SentenceTransformer(out)`` loads, whose
  ``encode(texts, normalize_embeddings=True)`` equals the run's ``task.embed_texts(texts)``. A
  task with separate query and document towers writes ``out/query`` and ``out/document``. The
  image-text run's text side is Transformer -> Pooling -> (Normalize) -> Dense (its projection,
  no activation) -> Normalize. A reranker run (``task: rerank``) writes a folder
  ``sentence_transformers.CrossEncoder(out)`` loads, scoring as the run does.
* ``onnx``: one graph per tower with dynamic batch (and sequence) axes: ``text.onnx``
  (``input_ids``, ``attention_mask``: (B, T) int64 -> ``embeddings`` (B, D); transformer +
  pooling + head + normalisation; prepend the side's prompt from ``export.json`` yourself; the
  graph pools every token, also a prompt's when the folder says ``include_prompt: false``;
  the tokenizer is saved beside it in ``out/text_tokenizer``; a fine-tuned CLIP / SigLIP
  writes its text tower the same way, SigLIP's graph taking ``input_ids`` only, padded to
  ``max_length``) and
  ``image.onnx`` (``images``: (B, C, H, W) float in [0, 1] -> ``embeddings`` (B, D));
  ``audio.onnx`` (``waveform``: (B, T) float32 at the ``sample_rate`` export.json records,
  ``mask``: (B, T) bool -> ``embeddings`` (B, D), the log-mel front end inside);
  ``export.json`` lists the graphs, their inputs and the image shape / max token length.
* ``hf``: a run that fine-tuned a CLIP / SigLIP folder (``model.name: hf_clip``): a folder
  ``CLIPModel.from_pretrained`` / ``SiglipModel.from_pretrained`` loads, with the fine-tuned
  weights, the learned temperature (and bias) as its logit scale (and bias), tokenizer and
  image-processor config.
* ``safetensors``: ``model.safetensors`` (the encoder's weights) + ``encoder.json`` (the encoder
  registry name and its resolved options, plus the run's model config);
  :func:`contrastkit.load_encoder` rebuilds the encoder from them without the run folder.

What is written comes from the task protocol only (``task.export_towers()``, ``encoder_spec``,
``image_shape``, ``query_kinds``: :mod:`contrastkit.train.tasks.base`): a task says which towers
it has; export never looks inside its model.

LoRA adapters (``model.lora``) are merged into the weights first, so every format loads with
no peft. ``interpolate=ALPHA`` (WiSE-FT) exports ``(1 - ALPHA) * start + ALPHA * fine-tuned``
weights, the start being the model the run began from (the pretrained folder, or the seeded
initialisation).

``out`` is written into a temporary sibling folder and renamed into place at the end
(:func:`atomic_folder`), so a crash never leaves a half export behind; ``out`` must not exist or
be empty.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from contrastkit.atomic import write_bytes, write_json, write_text
from contrastkit.encoders.saved import ENCODER_CONFIG, WEIGHTS
from contrastkit.encoders.st_folder import Dense, Normalize
from contrastkit.encoders.text import TextEncoder

FORMATS = ("sentence-transformers", "onnx", "safetensors", "hf")
# model.name of a text run -> the encoder registry name that rebuilds it


@contextlib.contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` that becomes ``out`` when the block ends (with a
    ``MANIFEST.json`` of every file's sha256, :func:`contrastkit.atomic.atomic_folder`); on an
    error nothing appears at ``out``."""
    from contrastkit.atomic import atomic_folder as folder

    with folder(out) as writer:
        yield writer.path


def _text_towers(task: Any) -> dict[str, tuple[TextEncoder, nn.Linear | None]]:
    """The run's text towers that sentence-transformers / ONNX can write: name ("" for a single
    tower) -> (encoder, projection or None), from the task's :meth:`export_towers`."""
    towers = task.export_towers().text
    return {
        name: (encoder, projection)
        for name, (encoder, projection) in towers.items()
        if isinstance(encoder, TextEncoder)
    }


def _projected(encoder: TextEncoder, projection: nn.Linear | None) -> TextEncoder:
    """``encoder`` followed by ``projection`` and L2 normalisation, as one :class:`TextEncoder`
    (sharing the transformer and tokenizer), for the image-text run's text side."""
    if projection is None:
        return encoder
    dense = Dense(
        projection.in_features, projection.out_features, projection.bias is not None, "Identity"
    )
    dense.linear.load_state_dict(projection.state_dict())
    head = [*encoder.head, *([Normalize()] if encoder.normalize else []), dense]
    out = TextEncoder(
        model=encoder.model,
        tokenizer=encoder.tokenizer,
        max_length=encoder.max_length,
        pooling=list(encoder.pooling),
        normalize=True,
        head=head,
        prompts=encoder.prompts,
        default_prompt_name=encoder.default_prompt_name,
        include_prompt=encoder.include_prompt,
    )
    return out.eval()


def _write_sentence_transformers(task: Any, tmp: Path, run: Path) -> None:
    towers = _text_towers(task)
    reranker = task.export_towers().cross_encoder
    if reranker is not None:  # a folder sentence_transformers.CrossEncoder loads
        reranker.save(tmp)
        return
    if not towers:
        raise ValueError(
            f"run {str(run)!r} has no text tower (its queries: {', '.join(task.query_kinds)}); "
            "sentence-transformers export is for text runs: use --format onnx or safetensors."
        )
    for name, (encoder, projection) in towers.items():
        _projected(encoder, projection).save(tmp / name if name else tmp)


class _TextGraph(nn.Module):
    """``(input_ids, attention_mask) (B, T) -> embeddings (B, D)`` for ONNX."""

    def __init__(self, encoder: TextEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.encoder.embed_padded({"input_ids": input_ids, "attention_mask": attention_mask})


def _onnx_export(module: nn.Module, args: tuple[Tensor, ...], path: Path, inputs: dict) -> None:
    import warnings

    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "ONNX export needs onnx and onnxscript: pip install 'contrastkit[onnx]'."
        ) from err
    kwargs: dict[str, Any] = {
        "input_names": list(inputs),
        "output_names": ["embeddings"],
        "dynamic_axes": {**inputs, "embeddings": {0: "batch"}},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: on CPU 5x faster than the torch.export one for these graphs
        # (tiny BERT 3 s vs 15 s) with the same parity; a torch without it takes the default.
        try:
            torch.onnx.export(module.eval(), args, str(path), dynamo=False, **kwargs)
        except TypeError:  # pragma: no cover - the dynamo flag removed
            torch.onnx.export(module.eval(), args, str(path), **kwargs)


def _write_onnx(cfg: Any, task: Any, tmp: Path) -> None:
    graphs: dict[str, Any] = {}
    for name, (encoder, projection) in _text_towers(task).items():
        enc = _projected(encoder, projection)
        stem = name or "text"
        tokens = enc.tokenize(["an example text", "a second, longer example text"])
        inputs = {
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
        }
        args = (tokens["input_ids"], tokens["attention_mask"])
        _onnx_export(_TextGraph(enc), args, tmp / f"{stem}.onnx", inputs)
        enc.tokenizer.save_pretrained(str(tmp / f"{stem}_tokenizer"))
        graphs[stem] = {
            "file": f"{stem}.onnx",
            "inputs": ["input_ids", "attention_mask"],
            "tokenizer": f"{stem}_tokenizer",
            "max_length": enc.max_length,
            "prompts": {"query": enc.prompt("query"), "document": enc.prompt("document")},
            # the graph pools every token: with include_prompt false it also pools the prompt
            "include_prompt": enc.include_prompt,
        }
    pretrained = task.export_towers().pretrained
    if pretrained is not None and not graphs:  # a CLIP / SigLIP checkpoint's text tower
        graphs["text"] = _write_pretrained_text_onnx(pretrained, tmp)
    image = task.export_towers().image
    if image is not None:
        c, h, w = task.image_shape
        example = torch.rand(2, c, h, w, generator=torch.Generator().manual_seed(0))
        _onnx_export(image, (example,), tmp / "image.onnx", {"images": {0: "batch"}})
        graphs["image"] = {"file": "image.onnx", "inputs": ["images"], "image_shape": [c, h, w]}
    audio = task.export_towers().audio
    if audio is not None:
        graphs["audio"] = _write_audio_onnx(audio, tmp)
    write_json(tmp / "export.json", {"format": "onnx", "graphs": graphs})


class _TokenGraph(nn.Module):
    """``(input_ids[, attention_mask]) (B, T) -> embeddings (B, D)`` of a checkpoint's
    ``encode_tokens`` (a CLIP / SigLIP text tower)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *tokens: Tensor) -> Tensor:
        return self.model.encode_tokens(*tokens)


def _write_pretrained_text_onnx(model: Any, tmp: Path) -> dict[str, Any]:
    """``text.onnx`` of a fine-tuned CLIP / SigLIP (``export_towers().pretrained``): its
    tokenizer's ids (and CLIP's attention mask) -> the normalised ``get_text_features``; the
    tokenizer goes to ``text_tokenizer``. CLIP pads to the longest text of a batch, SigLIP to
    ``max_length`` (``padding`` in export.json), as the run embeds."""
    tokens = model.tokenize(["an example text", "a second, longer example text"])
    names = list(tokens)  # input_ids (+ attention_mask for CLIP)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    _onnx_export(_TokenGraph(model), tuple(tokens.values()), tmp / "text.onnx", axes)
    model.tokenizer.save_pretrained(str(tmp / "text_tokenizer"))
    return {
        "file": "text.onnx",
        "inputs": names,
        "tokenizer": "text_tokenizer",
        "max_length": int(model.max_length),
        "padding": "max_length" if model.kind == "siglip" else "longest",
    }


def _write_audio_onnx(audio: nn.Module, tmp: Path) -> dict[str, Any]:
    """``audio.onnx``: ``waveform`` (B, T) float32 mono at ``sample_rate`` and ``mask`` (B, T)
    bool (True on real samples) -> ``embeddings`` (B, D); batch and length dynamic."""
    rate = int(getattr(audio, "sample_rate", 0))
    if not getattr(audio, "onnx_exportable", True):
        raise ValueError(
            f"the audio tower {type(audio).__name__} computes its input features outside torch "
            "(a spectrogram feature extractor); ONNX export covers audio_cnn and raw-waveform "
            "Hugging Face models (Wav2Vec2, HuBERT, WavLM): use --format safetensors."
        )
    g = torch.Generator().manual_seed(0)
    waveform = torch.randn(2, max(rate, 1600), generator=g) * 0.1
    mask = torch.ones(waveform.shape, dtype=torch.bool)
    mask[1, waveform.shape[1] // 2 :] = False
    axes = {0: "batch", 1: "samples"}
    _onnx_export(audio, (waveform, mask), tmp / "audio.onnx", {"waveform": axes, "mask": axes})
    return {"file": "audio.onnx", "inputs": ["waveform", "mask"], "sample_rate": rate}


def _write_safetensors(cfg: Any, task: Any, tmp: Path, run: Path) -> None:
    from safetensors.torch import save

    spec, encoder = task.encoder_spec, task.export_towers().encoder
    if encoder is None or spec is None:
        raise ValueError(
            f"run {str(run)!r}: task {cfg.task!r} has no single registered encoder "
            f"(an encoder_spec and its encoder), so load_encoder could not rebuild it; "
            f"use --format onnx."
        )
    registry, options = spec
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    write_bytes(tmp / WEIGHTS, save(state))
    config = {
        "encoder": registry,
        "options": options,
        "out_features": int(encoder.out_features),
        "model_config": cfg.model.model_dump(),
        "task": cfg.task,
        "run": str(run),
    }
    write_text(tmp / ENCODER_CONFIG, json.dumps(config, indent=2, default=str))


def _write_hf(task: Any, loss: nn.Module, tmp: Path, run: Path) -> None:
    from contrastkit.losses.temperature import LearnableTemperature
    from contrastkit.train.run import base_loss

    model = task.export_towers().pretrained
    if model is None:
        raise ValueError(
            f"run {str(run)!r} did not fine-tune a transformers checkpoint (model.name: "
            "hf_clip); --format hf is for those: use sentence-transformers, onnx or safetensors."
        )
    inner = base_loss(loss)
    temperature = getattr(inner, "temperature", None)
    if isinstance(temperature, LearnableTemperature):  # the learned scale goes back in
        bias = getattr(inner, "bias", None)
        model.set_logit_scale(float(temperature()), float(bias) if bias is not None else None)
    model.save_pretrained(tmp)


def interpolate_run(cfg: Any, task: Any, alpha: float) -> None:
    """WiSE-FT in place: ``task.model``'s weights become ``(1 - alpha) * start + alpha *
    fine-tuned``, the start rebuilt from the config as training built it (same seed); LoRA
    adapters are merged in both first."""
    from contrastkit.encoders.adapters import check_alpha, interpolate_state, merge_lora

    alpha = check_alpha(alpha)
    merge_lora(task.model)
    state = interpolate_state(start_state(cfg), task.model.state_dict(), alpha)
    task.model.load_state_dict(state)


def start_state(cfg: Any) -> dict[str, Tensor]:
    """The weights a run began from (WiSE-FT's start): its task's model rebuilt from the config
    as training built it (same seed; a pretrained folder as it is on disk), LoRA merged (a
    no-op: fresh adapters add zero)."""
    from contrastkit.encoders.adapters import merge_lora
    from contrastkit.train.tasks import build_task

    torch.manual_seed(cfg.seed)
    start = build_task(cfg).model
    merge_lora(start)
    return start.state_dict()


def export_run(
    run: str | os.PathLike, out: str | os.PathLike, format: str, interpolate: float | None = None
) -> Path:
    """Export ``run`` (a run folder) to ``out`` in ``format`` (see :data:`FORMATS`); returns
    ``out``.

    >>> export_run("runs/pairs", "exported", "pdf")
    Traceback (most recent call last):
    ...
    ValueError: format 'pdf' is not an export format; use one of sentence-transformers, onnx, safetensors, hf.
    """
    if format not in FORMATS:
        raise ValueError(
            f"format {format!r} is not an export format; use one of {', '.join(FORMATS)}."
        )
    run, out = Path(run), Path(out)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(
            f"{run} is not a run folder (no config.yaml); pass the folder `contrastkit train` "
            "printed."
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(
            f"out {str(out)!r} already exists and is not empty; pass a new folder or remove it."
        )
    from contrastkit.train.run import load_run

    if interpolate is not None:
        from contrastkit.encoders.adapters import check_alpha
        from contrastkit.errors import ArgumentError, restate

        try:
            check_alpha(interpolate)
        except ArgumentError as err:
            raise ValueError(restate(err, {"alpha": "--interpolate"})) from None
    from contrastkit.encoders.adapters import merge_lora
    from contrastkit.train.run import forget_loaded_runs

    cfg, task, loss = load_run(run)
    try:
        with torch.no_grad():
            if interpolate is not None:
                interpolate_run(cfg, task, interpolate)
            merge_lora(task.model)  # the plain architecture: loads with no peft
        with torch.no_grad(), atomic_folder(out) as tmp:
            if format == "sentence-transformers":
                _write_sentence_transformers(task, tmp, run)
            elif format == "onnx":
                _write_onnx(cfg, task, tmp)
            elif format == "hf":
                _write_hf(task, loss, tmp, run)
            else:
                _write_safetensors(cfg, task, tmp, run)
    finally:
        forget_loaded_runs()  # the task was changed in place (merged, interpolated)
    return out
