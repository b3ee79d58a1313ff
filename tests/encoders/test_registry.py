"""The encoder and index registries: every entry declares what it is when it registers, and the
registry modules import none of their members (the package ``__init__`` does)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from dataclasses import dataclass

import pytest
from torch import nn

from contrastkit.encoders import ENCODERS, create_encoder, list_encoders, register
from contrastkit.encoders.registry import INPUTS, EncoderSpec, encoder_spec, is_pretrained
from contrastkit.index import INDEXES, Index, list_indexes
from contrastkit.registry import Registry


@pytest.mark.parametrize("name", list_encoders())
def test_every_encoder_declares_its_inputs_and_weights(name: str) -> None:
    spec = encoder_spec(name)
    assert isinstance(spec, EncoderSpec) and spec.inputs in INPUTS
    assert is_pretrained(name) is spec.pretrained


def test_pretrained_is_what_the_entries_declare() -> None:
    assert {n for n in list_encoders() if is_pretrained(n)} == {
        "hf",
        "hf_audio",
        "hf_text",
        "hf_vision",
        "minilm",
    }
    assert {n for n in list_encoders() if encoder_spec(n).inputs == "text"} >= {"tiny_text"}
    assert is_pretrained("not_an_encoder") is False  # the config names the typo later


def test_a_new_entry_declares_pretrained_when_it_registers() -> None:
    @register("test_pretrained_tower", inputs="text", pretrained=True)
    def tower() -> nn.Module:
        return nn.Identity()

    try:
        assert is_pretrained("test_pretrained_tower")
        assert encoder_spec("test_pretrained_tower") == EncoderSpec("text", pretrained=True)
        assert isinstance(create_encoder("test_pretrained_tower"), nn.Identity)
    finally:
        ENCODERS._items.pop("test_pretrained_tower")
        ENCODERS._specs.pop("test_pretrained_tower")


def test_an_entry_must_declare_its_inputs() -> None:
    reg: Registry = Registry("encoder", declares=EncoderSpec)
    with pytest.raises(TypeError, match="encoder 'bare' must declare EncoderSpec's fields"):
        reg.register("bare")(nn.Identity)
    with pytest.raises(ValueError, match="inputs must be one of"):
        reg.register("odd", inputs="audio_waveform")(nn.Identity)
    assert "bare" not in reg and "odd" not in reg
    with pytest.raises(TypeError, match="takes no declarations"):
        Registry("widget").register("w", pretrained=True)


def test_spec_of_an_unknown_name_suggests() -> None:
    with pytest.raises(ValueError, match="Did you mean 'minilm'"):
        encoder_spec("minilmm")

    @dataclass(frozen=True)
    class Nothing:
        pass

    reg: Registry = Registry("thing", declares=Nothing)
    reg.register("a")(nn.Identity)
    assert reg.spec("a") == Nothing()


@pytest.mark.parametrize("name", list_indexes())
def test_every_index_backend_declares_itself(name: str) -> None:
    cls = INDEXES.get(name)
    assert inspect.isclass(cls) and issubclass(cls, Index)
    assert cls.backend == name
    assert set(cls.search_knobs) <= {"nprobe", "ef"}


@pytest.mark.parametrize(
    ("module", "call"),
    [
        ("contrastkit.encoders.registry", "list_encoders()"),
        ("contrastkit.index.base", "list_indexes()"),
    ],
)
def test_importing_only_the_registry_module_fills_it(module: str, call: str) -> None:
    # Python runs the package __init__ (which imports every member) before the registry module.
    code = f"from {module} import {call.split('(')[0]}; print(len({call}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    expected = len(list_encoders()) if "encoders" in module else len(list_indexes())
    assert int(out.stdout.strip()) == expected
