"""An encoder saved as weights + config, rebuilt from the encoder registry.

A folder holds ``model.safetensors`` (the encoder's ``state_dict``) and ``encoder.json``
(``{"encoder": <registry name>, "options": {...}}``, plus free-form provenance), as
``contrastkit export RUN OUT --format safetensors`` writes it. :func:`load_encoder` builds
``create_encoder(name, **options)`` and loads the weights strictly: nothing of the run folder
(or of the trainer) is needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file, save
from torch import nn

from contrastkit.atomic import write_bytes, write_text
from contrastkit.encoders.registry import ENCODERS, create_encoder, list_encoders

ENCODER_CONFIG = "encoder.json"
WEIGHTS = "model.safetensors"


def save_encoder(
    encoder: nn.Module, folder: str | os.PathLike, name: str, **options: object
) -> Path:
    """Write ``encoder``'s weights and ``{"encoder": name, "options": options}`` to ``folder``
    (``name`` must be a registered encoder that ``options`` rebuild).

    Each file is written atomically (:mod:`contrastkit.atomic`): a failed or killed save leaves
    the previous files whole, never a truncated ``model.safetensors``.

    >>> import tempfile, torch
    >>> enc = create_encoder("mlp", in_features=4, hidden_features=8, embedding_dim=2)
    >>> folder = save_encoder(enc, tempfile.mkdtemp(), "mlp", in_features=4, hidden_features=8, embedding_dim=2)
    >>> x = torch.rand(3, 4)
    >>> bool(torch.equal(load_encoder(folder)(x), enc(x)))
    True
    """
    list_encoders()  # registers every encoder
    if name not in ENCODERS:
        raise ValueError(
            f"name {name!r} is not a registered encoder; use one of {', '.join(list_encoders())}."
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    write_bytes(folder / WEIGHTS, save(state))
    config = {"encoder": name, "options": options}
    write_text(folder / ENCODER_CONFIG, json.dumps(config, indent=2, default=str))
    return folder


def load_encoder(folder: str | os.PathLike) -> nn.Module:
    """The encoder saved in ``folder`` (``encoder.json`` + ``model.safetensors``), in eval mode."""
    folder = Path(folder)
    config_path, weights = folder / ENCODER_CONFIG, folder / WEIGHTS
    for path in (config_path, weights):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; pass a folder written by `contrastkit export RUN OUT "
                "--format safetensors` (or contrastkit.encoders.saved.save_encoder)."
            )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path}: invalid JSON ({err.msg}); re-export the run.") from None
    except (UnicodeDecodeError, RecursionError) as err:
        what = "not UTF-8" if isinstance(err, UnicodeDecodeError) else "nested too deeply"
        raise ValueError(f"{config_path}: unreadable JSON ({what}); re-export the run.") from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{config_path}: a JSON object was expected, got {type(config).__name__}; re-export "
            "the run."
        )
    name, options = config.get("encoder"), config.get("options", {})
    if not isinstance(name, str) or name not in list_encoders():
        raise ValueError(
            f"{config_path}: encoder {name!r} is not a registered encoder; registered: "
            f"{', '.join(list_encoders())}."
        )
    if not isinstance(options, dict):
        raise ValueError(f"{config_path}: options must be an object, got {options!r}.")
    try:
        encoder = create_encoder(name, **options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: options do not build {name!r} ({err})") from None
    try:
        encoder.load_state_dict(load_file(str(weights)))
    except Exception as err:  # SafetensorError, a missing / unexpected key, a shape mismatch
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"{weights}: not the weights of the encoder {config_path.name} describes ({reason}); "
            "re-export the run."
        ) from None
    return encoder.eval()
