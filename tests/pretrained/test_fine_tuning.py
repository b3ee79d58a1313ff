"""Fine-tuning a pretrained checkpoint through the trainer: hf_clip runs (zero-shot at step 0
and at the end, the checkpoint's temperature / bias, export --format hf, WiSE-FT, LiT), LoRA on
the packaged MiniLM (resumed exactly, merged at export), freezing, gradient checkpointing and
layer-wise learning-rate decay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.pretrained.tiny_models import tiny_clip, tiny_siglip

from contrastkit.train.config import load_config_dict
from contrastkit.train.loop import train

pytest.importorskip("transformers")

TRAIN = {
    "log_every": 1,
    "monitor_every": 0,
    "checkpoint_every": 2,
    "progress": False,
    "threads": 1,
    "precision": "fp32",
}


def clip_config(tmp_path: Path, folder: Path, **model: object) -> dict:
    return {
        "name": "clip",
        "task": "image_text",
        "data": {"dataset": "emoji", "options": {"size": 32}, "subset": 48, "test_subset": 48},
        "model": {"name": "hf_clip", "options": {"path": str(folder)}, **model},
        "loss": {"name": "info_nce", "params": {"symmetric": True}, "learnable_temperature": True},
        "optim": {"batch_size": 16, "warmup_steps": 1, "lr": 1e-3},
        "train": {**TRAIN, "max_steps": 2, "output_dir": str(tmp_path / "runs")},
    }


def minilm_config(tmp_path: Path, **sections: object) -> dict:
    raw = {
        "name": "minilm",
        "task": "pairs",
        "data": {
            "dataset": "wordnet",
            "subset": 64,
            "test_subset": 32,
            "options": {"kind": "lemma_gloss", "pos": "r"},
        },
        "model": {"name": "minilm", "options": {"max_length": 16}},
        "loss": {"name": "info_nce", "params": {"temperature": 0.05, "symmetric": True}},
        "optim": {"batch_size": 8, "warmup_steps": 1, "lr": 1e-3},
        "train": {**TRAIN, "max_steps": 4, "output_dir": str(tmp_path / "runs")},
        "eval": {"corpus_size": 32, "queries": "first"},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def weights(run: Path) -> dict[str, torch.Tensor]:
    from contrastkit.train.checkpoint import latest_checkpoint

    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def evals(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "eval" in x]


def test_hf_clip_run_zero_shot_temperature_and_hf_export(tmp_path):
    import transformers as tf

    from contrastkit.export import export_run

    folder = tiny_clip(tmp_path / "clip")
    start = tf.CLIPModel.from_pretrained(str(folder))
    run = train(load_config_dict(clip_config(tmp_path, folder)), tmp_path / "run")
    first, last = evals(run)[0], evals(run)[-1]
    assert first["step"] == 0 and last["step"] == 2
    for record in (first, last):  # emoji blocks as class names: forgetting is visible
        assert {"zero-shot top-1", "zero-shot top-5"} <= set(record["eval"])
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    t1 = next(x["temperature"] for x in lines if "temperature" in x)
    assert t1 == pytest.approx(
        1 / float(start.logit_scale.detach().exp()), rel=0.05
    )  # the checkpoint's

    out = export_run(run, tmp_path / "hf", "hf")
    back = tf.CLIPModel.from_pretrained(str(out))
    trained = weights(run)
    key = "model.towers.model.text_projection.weight"
    torch.testing.assert_close(back.text_projection.weight, trained[key])
    assert not torch.equal(back.text_projection.weight, start.text_projection.weight)
    learned = float(torch.exp(-trained["loss.temperature.log_scale"]))
    assert float(back.logit_scale.detach().exp()) == pytest.approx(1 / learned, rel=1e-5)

    from contrastkit.encoders.hf_clip import HFCLIPModel

    again = HFCLIPModel(out).eval()  # the export is a hf_clip folder again
    assert again.encode_text(["a face"]).shape == (1, again.out_features)


def test_wise_ft_interpolates_between_start_and_fine_tuned(tmp_path, capsys):
    from contrastkit.export import export_run

    folder = tiny_clip(tmp_path / "clip")
    run = train(load_config_dict(clip_config(tmp_path, folder)), tmp_path / "run")
    key = "text_projection.weight"
    import transformers as tf

    start = tf.CLIPModel.from_pretrained(str(folder)).state_dict()[key]
    end = weights(run)["model.towers.model." + key]
    for alpha in (0.0, 0.5, 1.0):
        out = export_run(run, tmp_path / f"a{alpha}", "hf", interpolate=alpha)
        got = tf.CLIPModel.from_pretrained(str(out)).state_dict()[key]
        torch.testing.assert_close(got, torch.lerp(start, end, alpha))
    with pytest.raises(ValueError, match=r"--interpolate = 1\.5 is outside \[0, 1\]"):
        export_run(run, tmp_path / "bad", "hf", interpolate=1.5)

    # eval-zero-shot --interpolate: the sweep's ends are the start folder and the run itself
    from PIL import Image

    from contrastkit.cli import main
    from contrastkit.report.html import write_report

    data = tmp_path / "data"
    for k, name in enumerate(["red", "blue", "green"]):
        (data / name).mkdir(parents=True)
        for i in range(3):
            Image.new(
                "RGB", (32, 32), tuple((60 * i + 200 * (c == k)) % 256 for c in range(3))
            ).save(data / name / f"{i}.png")
    classes = tmp_path / "classes.txt"
    classes.write_text("red\nblue\ngreen\n")

    def zero_shot(model, *extra):
        capsys.readouterr()
        assert (
            main(["eval-zero-shot", str(model), str(data), "--classes", str(classes), *extra]) == 0
        )
        return json.loads(capsys.readouterr().out)

    sweep = zero_shot(run, "--interpolate", "0,0.5,1")["sweep"]
    assert [r["alpha"] for r in sweep] == [0.0, 0.5, 1.0]
    for row, model in ((sweep[0], folder), (sweep[2], run)):
        want = zero_shot(model)
        assert row["zero-shot top-1"] == pytest.approx(want["zero-shot top-1"])
    kept = json.loads((run / "wiseft.json").read_text())["sweeps"]
    assert len(kept) == 1 and kept[0]["sweep"] == sweep
    assert "WiSE-FT" in write_report(run).read_text()
    capsys.readouterr()
    bad = ["eval-zero-shot", str(run), str(data), "--classes", str(classes), "--interpolate"]
    assert main([*bad, "0,2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--interpolate = 2.0 is outside [0, 1]" in err and "\n" not in err


def test_lit_locks_the_image_tower_and_siglip_starts_from_its_bias(tmp_path):
    folder = tiny_siglip(tmp_path / "siglip")
    raw = clip_config(tmp_path, folder)
    raw["model"]["options"]["lock_image"] = True
    raw["loss"] = {
        "name": "sigmoid_contrastive",
        "params": {"learn_bias": True},
        "learnable_temperature": True,
    }
    import transformers as tf

    start = tf.SiglipModel.from_pretrained(str(folder))
    cfg = load_config_dict(raw)
    from contrastkit.train.run import build_loss
    from contrastkit.train.tasks import build_task

    task = build_task(cfg)
    loss = build_loss(cfg, task=task)
    assert float(loss.bias.detach()) == pytest.approx(float(start.logit_bias.detach()))
    assert float(loss.temperature()) == pytest.approx(1 / float(start.logit_scale.detach().exp()))
    run = train(cfg, tmp_path / "run")
    trained = weights(run)
    vision = "model.towers.model.vision_model.post_layernorm.weight"
    text = "model.towers.model.text_model.head.weight"
    torch.testing.assert_close(trained[vision], start.vision_model.post_layernorm.weight)
    assert not torch.equal(trained[text], start.text_model.head.weight)


def test_lora_minilm_resumes_exactly_saves_adapters_and_exports_merged(tmp_path):
    from sentence_transformers import SentenceTransformer

    from contrastkit.export import export_run
    from contrastkit.train.run import load_run

    raw = minilm_config(tmp_path, model={"lora": {"r": 4, "alpha": 8, "dropout": 0.1}})
    cfg = load_config_dict(raw)
    full = train(cfg, tmp_path / "full")
    part = train(cfg, tmp_path / "part", stop_after=2)
    train(cfg, part, resume=True)
    a, b = weights(full), weights(part)
    assert any("lora_A" in k for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    base = "model.encoder.model.encoder.layer.0.attention.self.query"
    assert any(k.startswith(base + ".lora_B") for k in a)

    texts = ["quickly", "in a slow manner", "very"]
    _, task, _ = load_run(full)
    want = task.embed_texts(texts)

    # run/adapters is a PEFT adapter folder: PeftModel loads it onto the base MiniLM
    import peft
    import transformers as tf

    config = json.loads((full / "adapters" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["peft_type"] == "LORA"
    tokens = task.model["encoder"].tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        bert = tf.AutoModel.from_pretrained(config["base_model_name_or_path"])
        plain = bert.eval()(**tokens).last_hidden_state
        loaded = peft.PeftModel.from_pretrained(bert, str(full / "adapters")).eval()
        got = loaded(**tokens).last_hidden_state
        trained = task.model["encoder"].model.eval()(**tokens).last_hidden_state
    torch.testing.assert_close(got, trained, atol=1e-5, rtol=0)
    assert (got - plain).abs().max() > 1e-3  # the adapters trained
    out = export_run(full, tmp_path / "st", "sentence-transformers")
    saved = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k for k in saved)  # merged: a plain BERT folder, no peft needed
    got = torch.as_tensor(SentenceTransformer(str(out)).encode(texts, normalize_embeddings=True))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_fine_tuning_keys_that_match_nothing_are_one_line(tmp_path):
    from contrastkit.train.tasks import build_task

    bad = [
        (
            {"lora": {"target_modules": ["nothing_here"]}},
            r"model\.lora\.target_modules = \['nothing_here'\] matches no layer",
        ),
        ({"freeze": ["towers.*"]}, r"model\.freeze: 'towers\.\*' matches no trainable parameter"),
        ({"freeze": ["*"]}, r"model\.freeze = \['\*'\] freezes every parameter"),
    ]
    for model, message in bad:
        cfg = load_config_dict(minilm_config(tmp_path, model=model))
        with pytest.raises(ValueError, match=message):
            build_task(cfg)


def test_freeze_pattern_and_gradient_checkpointing_keep_the_gradients(tmp_path):
    raw = minilm_config(tmp_path, train={"max_steps": 2})
    raw["model"]["freeze"] = ["encoder.model.embeddings.*"]
    plain = train(load_config_dict(raw), tmp_path / "plain")
    raw["train"]["gradient_checkpointing"] = True
    checkpointed = train(load_config_dict(raw), tmp_path / "ckpt")
    a, b = weights(plain), weights(checkpointed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    from contrastkit.encoders.text import TextEncoder

    start = TextEncoder().model.state_dict()["embeddings.word_embeddings.weight"]
    assert torch.equal(a["model.encoder.model.embeddings.word_embeddings.weight"], start)


def test_layer_decay_gives_lower_layers_smaller_rates(tmp_path):
    from contrastkit.train.loop import make_optimizer
    from contrastkit.train.tasks import build_task

    cfg = load_config_dict(minilm_config(tmp_path, optim={"layer_decay": 0.5}))
    task = build_task(cfg)
    opt = make_optimizer(cfg, task.model)
    names = {id(p): n for n, p in task.model.named_parameters()}
    rate = {names[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}
    emb = rate["encoder.model.embeddings.word_embeddings.weight"]
    top = rate["encoder.model.encoder.layer.5.attention.self.query.weight"]
    assert top == pytest.approx(cfg.optim.lr * 0.5)  # 6 layers: the last is one step below
    assert emb == pytest.approx(cfg.optim.lr * 0.5**7)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_hf_clip_run_exports_both_towers_to_onnx(tmp_path, kind):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from contrastkit.export import export_run
    from contrastkit.train.run import load_run

    folder = (tiny_clip if kind == "clip" else tiny_siglip)(tmp_path / kind)
    raw = clip_config(tmp_path, folder)
    raw["train"]["max_steps"] = 1
    run = train(load_config_dict(raw), tmp_path / "run")
    out = export_run(run, tmp_path / "onnx", "onnx")
    spec = json.loads((out / "export.json").read_text())["graphs"]
    assert spec["image"]["image_shape"] == [3, 32, 32]
    _, task, _ = load_run(run)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(out / "image.onnx"))
    got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    torch.testing.assert_close(got, task.embed_images(images), atol=1e-5, rtol=0)

    import transformers as tf

    text = spec["text"]  # the text tower: tokenizer ids (+ CLIP's mask) -> embeddings
    assert text["padding"] == ("longest" if kind == "clip" else "max_length")
    texts = ["a grinning face", "a red apple on a white plate", "x"]
    tokenizer = tf.AutoTokenizer.from_pretrained(str(out / text["tokenizer"]))
    padding = True if text["padding"] == "longest" else "max_length"
    tokens = tokenizer(
        texts, padding=padding, truncation=True, max_length=text["max_length"], return_tensors="np"
    )
    session = ort.InferenceSession(str(out / text["file"]))
    got = torch.from_numpy(session.run(None, {k: tokens[k] for k in text["inputs"]})[0])
    torch.testing.assert_close(got, task.embed_texts(texts), atol=1e-5, rtol=0)


def test_hf_vision_backbone_trains_in_the_views_task_and_reloads(tmp_path):
    from tests.pretrained.tiny_models import tiny_vit

    from contrastkit.encoders import load_encoder
    from contrastkit.export import export_run
    from contrastkit.train.run import load_run

    folder = tiny_vit(tmp_path / "dinov2", "dinov2")
    raw = {
        "name": "views",
        "task": "views",
        "data": {"dataset": "digits", "subset": 64, "test_subset": 32},
        "model": {
            "name": "hf_vision",
            "options": {"path": str(folder), "pooling": "cls"},
            "out_dim": 16,
            "projection_dim": 8,
            "freeze": ["encoder.backbone.model.embeddings.*"],
        },
        "loss": {"name": "nt_xent", "params": {"temperature": 0.3}},
        "optim": {"batch_size": 16, "warmup_steps": 1},
        "train": {**TRAIN, "max_steps": 2, "output_dir": str(tmp_path / "runs")},
        "eval": {"knn_k": 5, "probe": False},
    }
    cfg = load_config_dict(raw)
    assert cfg.optim.lr == pytest.approx(1e-4)  # a pretrained backbone: the fine-tuning rate
    run = train(cfg, tmp_path / "run")
    _, task, _ = load_run(run)
    out = export_run(run, tmp_path / "st", "safetensors")
    encoder = load_encoder(out)
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), task.model["encoder"](images))


def test_lora_on_clip_exports_a_plain_clip_folder(tmp_path):
    import transformers as tf

    from contrastkit.export import export_run
    from contrastkit.train.run import load_run

    folder = tiny_clip(tmp_path / "clip")
    raw = clip_config(tmp_path, folder, lora={"r": 2, "target_modules": ["q_proj", "v_proj"]})
    run = train(load_config_dict(raw), tmp_path / "run")
    _, task, _ = load_run(run)
    texts = ["a grinning face", "an arrow"]
    with torch.no_grad():
        want = task.embed_texts(texts)
    import peft

    adapters = run / "adapters"  # a PEFT folder for the CLIPModel it started from
    config = json.loads((adapters / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(folder)
    tokens = task.model["towers"].tokenize(texts)
    with torch.no_grad():
        peft_clip = peft.PeftModel.from_pretrained(tf.CLIPModel.from_pretrained(str(folder)),
                                                   str(adapters)).eval()  # fmt: skip
        from contrastkit.encoders.hf_clip import _features

        direct = torch.nn.functional.normalize(
            _features(peft_clip.get_text_features(**tokens)), dim=-1
        )
    torch.testing.assert_close(direct, want, atol=1e-5, rtol=0)
    out = export_run(run, tmp_path / "hf", "hf")
    saved = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k for k in saved)
    back = tf.CLIPModel.from_pretrained(str(out)).eval()
    start = tf.CLIPModel.from_pretrained(str(folder))
    q = "text_model.encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(back.state_dict()[q], start.state_dict()[q])  # merged update
    from contrastkit.encoders.hf_clip import HFCLIPModel

    with torch.no_grad():
        got = HFCLIPModel(out).eval().encode_text(texts)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_export_interpolate_outside_0_1_is_one_line_exit_2(tmp_path, capsys):
    from tests.train.conftest import tiny_config

    from contrastkit.cli import main

    raw = tiny_config(tmp_path, train={"max_steps": 2, "checkpoint_every": 2})
    run = train(load_config_dict(raw), tmp_path / "run")
    out = tmp_path / "out"
    capsys.readouterr()  # the training's own log lines
    assert (
        main(["export", str(run), str(out), "--format", "safetensors", "--interpolate", "-0.1"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "--interpolate = -0.1 is outside [0, 1]" in err and "\n" not in err
    assert (
        main(["export", str(run), str(out), "--format", "safetensors", "--interpolate", "0"]) == 0
    )
    from contrastkit.encoders import load_encoder

    torch.manual_seed(0)  # the start: the run's seeded initialisation
    from contrastkit.train.tasks import build_task

    start = build_task(load_config_dict(raw)).model["encoder"]
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(load_encoder(out)(x), start.eval()(x))
