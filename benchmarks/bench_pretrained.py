"""Fine-tuning pretrained checkpoints (issue 30): LoRA vs full fine-tuning, gradient
checkpointing memory, forgetting and WiSE-FT on a small CLIP.

``python benchmarks/bench_pretrained.py lora|checkpointing|wiseft [--quick]`` runs one section and
writes ``benchmarks/results/pretrained_<section>.json``; ``run()`` (for ``benchmarks/run.py``)
runs all three (about 20 CPU minutes). Every number comes from the trainer's own files
(``metrics.jsonl``, ``eval.json``, checkpoints), except the checkpointing section, which times
one optimizer step directly.

* lora: MiniLM on WordNet noun lemma -> gloss pairs, the same steps and batch for both, full
  fine-tuning at lr 1e-4 and LoRA (r 8, alpha 16, query/value/key/dense) at lr 1e-3 (LoRA's
  usual 10x): trainable parameters, AdamW state bytes (from the checkpoint), step time, R@1 /
  R@10 of 1000-way retrieval.
* checkpointing: MiniLM, batch 256, 64 tokens per text: activation memory kept for the backward
  (bytes of the distinct non-parameter tensors saved by autograd, counted by a
  ``saved_tensors_hooks`` pair; the checkpointed blocks keep only their inputs) and the peak
  resident memory of a fresh process over the step, and the step time, with and without.
* wiseft: a tiny CLIP (random, transformers ``CLIPModel``) trained on emoji <-> Unicode names with
  the trainer (``hf_clip``), exported ``--format hf`` (the "pretrained" start); then fine-tuned on
  a different task, emoji <-> Unicode block captions (an image folder manifest), fully and LiT
  (image tower locked); each exported with ``--interpolate`` alpha in 0, 0.25, 0.5, 0.75, 1 and
  evaluated on the held-out emoji: zero-shot block classification (the new task) and image ->
  name retrieval R@1 / R@10 (what the start knew; forgetting).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


# -- LoRA vs full fine-tuning ----------------------------------------------------------------
def _minilm_raw(out: Path, steps: int, lora: bool) -> dict[str, Any]:
    model: dict[str, Any] = {
        "name": "minilm",
        "options": {"max_length": 64, "bucket_size": 16},
    }
    if lora:
        model["lora"] = {"r": 8, "alpha": 16, "target_modules": ["query", "key", "value", "dense"]}
    return {
        "name": "lora" if lora else "full",
        "seed": 0,
        "task": "pairs",
        "data": {"dataset": "wordnet", "options": {"kind": "lemma_gloss", "pos": "n"}},
        "model": model,
        "loss": {"name": "info_nce", "params": {"temperature": 0.05, "symmetric": True}},
        "negatives": {"false_negatives": {"ids": True}},
        "optim": {
            "lr": 1e-3 if lora else 1e-4,
            "weight_decay": 0.01,
            "warmup_steps": 5,
            "batch_size": 32,
        },
        "train": {
            "max_steps": steps,
            "precision": "fp32",
            "threads": 2,
            "log_every": 5,
            "monitor_every": 0,
            "checkpoint_every": 0,
            "progress": False,
            "output_dir": str(out),
        },
        "eval": {"corpus_size": 1000, "queries": "first", "recall_at": [1, 10]},
    }


def lora_row(run: Path) -> dict[str, Any]:
    """One row of the LoRA table from a finished run folder (its config, checkpoint, metrics)."""
    from safetensors import safe_open

    from contrastkit.train.checkpoint import latest_checkpoint, load_state
    from contrastkit.train.config import load_config

    cfg = load_config(run / "config.yaml")
    ckpt = latest_checkpoint(run)
    weights = state = trainable = 0
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            weights += f.get_tensor(key).numel()
    optimizer = load_state(ckpt)["optimizer"]["state"]  # param index -> AdamW moments
    for moments in optimizer.values():
        for key in ("exp_avg", "exp_avg_sq"):
            state += moments[key].numel() * moments[key].element_size()
        trainable += moments["exp_avg"].numel()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    timed = [x for x in lines if "elapsed_s" in x and "loss" in x]
    final = json.loads((run / "eval.json").read_text())["metrics"]
    base = json.loads((run / "baseline.json").read_text())["metrics"]
    return {
        "mode": cfg.name,
        "lr": cfg.optim.lr,
        "steps": timed[-1]["step"],
        "trainable params": trainable,
        "trainable %": round(100 * trainable / weights, 2),
        "AdamW state MB": round(state / 2**20, 2),
        "step s": round(timed[-1]["elapsed_s"] / timed[-1]["step"], 3),
        "R@1": round(final["R@1"], 4),
        "R@10": round(final["R@10"], 4),
        "R@1 before": round(base["R@1"], 4),
        "R@10 before": round(base["R@10"], 4),
    }


def lora(quick: bool = False, modes: tuple[str, ...] = ("full", "lora")) -> dict[str, Any]:
    from contrastkit.train.config import load_config_dict
    from contrastkit.train.loop import train

    steps = 4 if quick else 30
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            cfg = load_config_dict(_minilm_raw(Path(tmp), steps, mode == "lora"))
            rows.append(lora_row(train(cfg, Path(tmp) / cfg.name)))
    return {
        "title": "LoRA vs full fine-tuning: MiniLM, WordNet noun lemma -> gloss, batch 32",
        "rows": rows,
        "notes": f"{steps} steps each, fp32, 2 threads; R@k of 1000-way retrieval (one query "
        "per held-out synset); 'before' is the pretrained model at step 0.",
    }


# -- gradient checkpointing -------------------------------------------------------------------
_CHILD = r"""
import json, resource, sys, time, torch
from contrastkit.encoders.text import TextEncoder
from contrastkit.encoders.adapters import enable_gradient_checkpointing
from contrastkit.data import load_wordnet
mode, batch, length, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)
enc = TextEncoder(max_length=length).train()
if mode == "checkpointing":
    assert enable_gradient_checkpointing(enc) == 1
pairs = load_wordnet(kind="lemma_gloss", pos="n", split="train")
texts = [g + " " + g for g in pairs.positive[: batch * (steps + 1)]]  # long enough for 64 tokens
opt = torch.optim.AdamW([p for p in enc.parameters() if p.requires_grad], lr=1e-5)
params = {p.data_ptr() for p in enc.parameters()}
def step(chunk, count):
    tokens = enc.tokenizer(chunk, padding="max_length", truncation=True, max_length=length,
                           return_tensors="pt")
    saved = {}
    def pack(t):
        if count and t.data_ptr() not in params and t.untyped_storage().nbytes():
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z = enc.embed_padded(dict(tokens))  # (B, D)
        logits = z @ z.roll(1, 0).T / 0.05
        loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(z)))
    loss.backward()
    opt.step(); opt.zero_grad(set_to_none=True)
    return sum(saved.values())
step(texts[:8], False)  # warm-up on 8 texts (AdamW state, kernels)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times, kept = [], 0
for s in range(steps):
    t0 = time.perf_counter()
    kept = step(texts[(s + 1) * batch : (s + 2) * batch], True)
    times.append(time.perf_counter() - t0)
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"saved_MB": kept / 2**20, "rss_peak_MB": rss1 / 1024,
                  "rss_warm_MB": rss0 / 1024, "step_s": min(times)}))
"""


def checkpointing(quick: bool = False) -> dict[str, Any]:
    batch, length, steps = (32, 64, 1) if quick else (256, 64, 1)
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    for mode in ("plain", "checkpointing"):
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, mode, str(batch), str(length), str(steps)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        got = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "mode": mode,
                "batch": batch,
                "tokens": length,
                "saved activations MB": round(got["saved_MB"], 1),
                "RSS before the step MB": round(got["rss_warm_MB"], 0),
                "peak RSS MB": round(got["rss_peak_MB"], 0),
                "step peak over before MB": round(got["rss_peak_MB"] - got["rss_warm_MB"], 0),
                "step s": round(got["step_s"], 2),
            }
        )
    ratio = rows[1]["saved activations MB"] / max(rows[0]["saved activations MB"], 1e-9)
    return {
        "title": f"Gradient checkpointing: MiniLM, batch {batch}, {length} tokens, fp32",
        "rows": rows,
        "notes": f"activation memory with checkpointing = {ratio:.3f} of without; 'peak RSS' "
        "is the process's high-water mark (model, AdamW state and the step's peak together); "
        f"one step of {batch} texts after a warm-up step of 8 (2 threads, a shared machine).",
    }


# -- forgetting and WiSE-FT ---------------------------------------------------------------------
def _tiny_clip(folder: Path) -> Path:
    import transformers as tf

    from contrastkit.encoders.text import default_model_path

    torch.manual_seed(0)
    common = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4}
    text = {**common, "vocab_size": 30522, "num_hidden_layers": 2, "max_position_embeddings": 32,
            "eos_token_id": 102, "pad_token_id": 0}  # fmt: skip
    vision = {**common, "num_hidden_layers": 3, "image_size": 32, "patch_size": 8}
    config = tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)
    tf.CLIPModel(config).save_pretrained(str(folder))
    tf.AutoTokenizer.from_pretrained(str(default_model_path())).save_pretrained(str(folder))
    tf.CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(str(folder))
    return folder


def _clip_raw(out: Path, name: str, path: Path, steps: int, **data: Any) -> dict[str, Any]:
    return {
        "name": name,
        "seed": 0,
        "task": "image_text",
        "data": data or {"dataset": "emoji", "options": {"size": 32}},
        "model": {"name": "hf_clip", "options": {"path": str(path)}},
        "loss": {"name": "info_nce", "params": {"symmetric": True}, "learnable_temperature": True},
        "optim": {"lr": 2e-3, "warmup_steps": 5, "batch_size": 64, "grad_clip": 5.0},
        "train": {
            "max_steps": steps,
            "precision": "fp32",
            "threads": 2,
            "log_every": 10,
            "monitor_every": 0,
            "checkpoint_every": 0,
            "progress": False,
            "output_dir": str(out),
        },
        "eval": {"recall_at": [1, 10]},
    }


def _block_folder(root: Path) -> Path:
    """The emoji training split as PNG files + a manifest whose caption is the Unicode block."""
    from PIL import Image

    from contrastkit.data.emoji import load_emoji

    ds = load_emoji(split="train", size=32)
    rows = ["path,label,caption"]
    for i in range(len(ds)):
        name = f"{int(ds.groups[i]):x}.png"
        Image.fromarray(ds.images[i].permute(1, 2, 0).numpy()).save(root / name)
        block = ds.classes[int(ds.labels[i])]
        rows.append(f'{name},"{block}","{block}"')
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root / "manifest.csv"


def _evaluate(folder: Path) -> dict[str, float]:
    """Held-out emoji: zero-shot block accuracy and image -> Unicode name retrieval."""
    from contrastkit.data.image_source import open_images
    from contrastkit.encoders.hf_clip import HFCLIPModel
    from contrastkit.eval.pairs import recall_summary
    from contrastkit.eval.zero_shot import class_embeddings, zero_shot_accuracy

    model = HFCLIPModel(folder).eval()
    test = open_images("emoji", "test", options={"size": 32})
    with torch.no_grad():
        images = torch.cat([model.encode_image(x) for x, _ in test.batches(256)])
        names = torch.cat(
            [model.encode_text(list(test.texts[i : i + 256])) for i in range(0, len(test), 256)]
        )
        classes = class_embeddings(
            lambda t: torch.cat([model.encode_text(t[i : i + 256]) for i in range(0, len(t), 256)]),
            test.classes,
        )
    out = zero_shot_accuracy(images, classes, test.labels)
    recall = recall_summary(images, names, torch.arange(len(test)), [1, 10])
    out.update({f"name {k}": v for k, v in recall.items() if k != "MRR"})
    return out


def wiseft(quick: bool = False, stages: tuple[str, ...] = ("pre", "ft", "eval"),
           work: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """The forgetting / WiSE-FT table; ``stages`` run in ``work`` (kept between calls, so each
    stage fits a 10-minute slot on a busy machine: ``wiseft-pre``, ``wiseft-ft``,
    ``wiseft-eval``)."""
    from contrastkit.export import export_run
    from contrastkit.train.config import load_config_dict
    from contrastkit.train.loop import train

    pre_steps, ft_steps = (3, 3) if quick else (40, 12)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    holder = tempfile.TemporaryDirectory() if work is None else None
    tmp_path = Path(holder.name) if holder is not None else Path(work)
    tmp_path.mkdir(parents=True, exist_ok=True)
    random_clip, start = tmp_path / "random", tmp_path / "start"
    if "pre" in stages:
        _tiny_clip(random_clip)
        raw = _clip_raw(tmp_path, "pre", random_clip, pre_steps)
        pre = train(load_config_dict(raw), tmp_path / "pre")
        export_run(pre, start, "hf")
    if "ft" in stages:
        (tmp_path / "blocks").mkdir(exist_ok=True)
        manifest = _block_folder(tmp_path / "blocks")
        data = {
            "dataset": "image_folder",
            "root": str(manifest),
            "image_size": 32,
            "options": {"label_column": "label", "caption_column": "caption"},
        }
        for mode in ("full", "LiT"):
            raw = _clip_raw(tmp_path, f"ft-{mode}", start, ft_steps, **data)
            raw["optim"]["lr"] = 1e-4
            if mode == "LiT":
                raw["model"]["options"]["lock_image"] = True
            train(load_config_dict(raw), tmp_path / f"ft-{mode}")
    if "eval" in stages:
        rows.append({"model": "random init", "alpha": "-", **_evaluate(random_clip)})
        rows.append({"model": "start (emoji names)", "alpha": "-", **_evaluate(start)})
        for mode in ("full", "LiT"):
            run = tmp_path / f"ft-{mode}"
            for alpha in (0.0, 0.25, 0.5, 0.75, 1.0):
                out = tmp_path / f"{mode}-{alpha}"
                if not out.exists():
                    export_run(run, out, "hf", interpolate=alpha)
                rows.append({"model": f"fine-tuned on blocks, {mode}", "alpha": alpha,
                             **_evaluate(out)})  # fmt: skip
    if holder is not None:
        holder.cleanup()
    rows = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    return {
        "title": "Forgetting and WiSE-FT: a tiny CLIP on emoji, fine-tuned on block captions",
        "rows": rows,
        "notes": f"start: {pre_steps} steps emoji <-> name (lr 2e-3, batch 64); fine-tuning: "
        f"{ft_steps} steps emoji <-> Unicode block caption (lr 1e-4, batch 64); alpha 0 = the "
        "start, 1 = fine-tuned (export --interpolate). Held-out emoji (286, 20 blocks): "
        "zero-shot top-1/top-5 over block names, name R@k = image -> its Unicode name among "
        f"all held-out names. Stages {', '.join(stages)}: {time.perf_counter() - t0:.0f} s.",
    }


SECTIONS = {"lora": lora, "checkpointing": checkpointing, "wiseft": wiseft}


def run() -> list[dict[str, Any]]:
    return [fn() for fn in SECTIONS.values()]


if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if not a.startswith("--")] or list(SECTIONS)
    quick = "--quick" in sys.argv
    for name in names:
        t = time.perf_counter()
        if name.startswith("lora-"):  # one mode of the LoRA table: lora-full, lora-lora
            section = lora(quick, (name.split("-", 1)[1],))
        elif name.startswith("wiseft-"):  # one stage, kept in $WISEFT_WORK (/tmp/wiseft_work)
            work = Path(os.environ.get("WISEFT_WORK", tempfile.gettempdir() + "/wiseft_work"))
            section = wiseft(quick, (name.split("-", 1)[1],), work)
        else:
            section = SECTIONS[name](quick)
        section["seconds"] = round(time.perf_counter() - t, 1)
        section["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(json.dumps(section, indent=1))
        if not quick:
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / f"pretrained_{name}.json").write_text(json.dumps(section, indent=1))
