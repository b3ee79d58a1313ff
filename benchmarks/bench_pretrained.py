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
* wiseft: a tiny CLIP (random, transformers ``CLIPModel``, 32 px, patch 4) trained with the
  trainer (``hf_clip``) on emoji <-> Unicode name, exported ``--format hf`` (the "pretrained"
  start); then fine-tuned from that folder on a different task, emoji <-> its dominant colour
  ("yellow", "grey", ...), fully and LiT (image tower locked); evaluated with
  ``contrastkit eval-zero-shot`` (the start) and ``eval-zero-shot RUN --interpolate
  0,0.25,0.5,0.75,1`` (the fine-tuned runs' WiSE-FT sweep) on emoji held out of both trainings:
  which keyword their name holds (face, heart, arrow, ...: the start's task) and their colour
  (the new task).
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
            "threads": 1,
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
    if set(modes) == {"full", "lora"}:
        side = lora_step_times(2 if quick else 6)
        for row in rows:
            row["step s, side by side"] = round(side[row["mode"]], 3)
    return {
        "title": "LoRA vs full fine-tuning: MiniLM, WordNet noun lemma -> gloss, batch 32",
        "rows": rows,
        "notes": f"{steps} steps each, fp32, 1 thread; 'step s' from the trainer's log, "
        "'side by side' the median of 6 interleaved steps in one process; R@k of 1000-way retrieval (one query "
        "per held-out synset); 'before' is the pretrained model at step 0.",
    }


def lora_step_times(repeats: int = 6, batch: int = 32) -> dict[str, float]:
    """Seconds per optimizer step of full fine-tuning and LoRA, side by side in one process:
    the two models take turns on the same batches (order alternating each round, the first
    round a warm-up); the median of ``repeats`` rounds each."""
    import statistics

    from contrastkit.train.config import load_config_dict
    from contrastkit.train.loop import make_optimizer
    from contrastkit.train.run import build_loss
    from contrastkit.train.tasks import build_task

    parts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("full", "lora"):
            cfg = load_config_dict(_minilm_raw(Path(tmp), 1, mode == "lora"))
            torch.manual_seed(0)
            task = build_task(cfg)
            loss = build_loss(cfg, task=task)
            weights = torch.nn.ModuleDict({"model": task.model, "loss": loss})
            parts[mode] = (task, loss, make_optimizer(cfg, weights))
    g = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"full": [], "lora": []}
    for r in range(repeats + 1):
        rows = torch.randperm(parts["full"][0].num_train, generator=g)[:batch]
        for mode in ("full", "lora") if r % 2 else ("lora", "full"):
            task, loss, opt = parts[mode]
            data = task.batch(rows, torch.Generator().manual_seed(r))
            t0 = time.perf_counter()
            task.loss_terms(data, loss).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if r:
                times[mode].append(time.perf_counter() - t0)
    return {mode: statistics.median(t) for mode, t in times.items()}


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
KEYWORDS = ("face", "heart", "arrow", "hand", "person", "circle", "squared", "triangle", "ball",
            "cloud")  # fmt: skip
"""The start's zero-shot task: held-out emoji whose Unicode name holds exactly one of these."""
HELD_OUT = 6  # emoji per keyword kept out of both trainings
CLIP_SIZES = {"width": 128, "vision_layers": 4, "text_layers": 2, "patch": 4}


def _tiny_clip(folder: Path, width: int, vision_layers: int, text_layers: int,
               patch: int) -> Path:  # fmt: skip
    """A random ``CLIPModel`` at 32 px with the packaged MiniLM's tokenizer, by save_pretrained."""
    import transformers as tf

    from contrastkit.encoders.text import default_model_path

    torch.manual_seed(0)
    common = {"hidden_size": width, "intermediate_size": 2 * width, "num_attention_heads": 4}
    text = {**common, "vocab_size": 30522, "num_hidden_layers": text_layers,
            "max_position_embeddings": 32, "eos_token_id": 102, "pad_token_id": 0}  # fmt: skip
    vision = {**common, "num_hidden_layers": vision_layers, "image_size": 32, "patch_size": patch}
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


def _clip_raw(out: Path, name: str, path: Path, steps: int, manifest: Path, lr: float,
              batch: int) -> dict[str, Any]:  # fmt: skip
    return {
        "name": name,
        "seed": 0,
        "task": "image_text",
        "data": {
            "dataset": "image_folder",
            "root": str(manifest),
            "image_size": 32,
            "options": {
                "label_column": "label",
                "caption_column": "caption",
                "test_fraction": 0.1,
            },
        },
        "model": {"name": "hf_clip", "options": {"path": str(path)}},
        "loss": {"name": "info_nce", "params": {"symmetric": True}, "learnable_temperature": True},
        "optim": {"lr": lr, "warmup_steps": 20, "batch_size": batch, "grad_clip": 5.0},
        "train": {
            "max_steps": steps,
            "precision": "fp32",
            "threads": 1,
            "log_every": 25,
            "monitor_every": 0,
            "checkpoint_every": 0,
            "progress": False,
            "output_dir": str(out),
        },
        "eval": {"recall_at": [1, 10]},
    }


COLOURS = {"red": (345, 15), "orange": (15, 40), "yellow": (40, 70), "green": (70, 170),
           "blue": (170, 255), "purple": (255, 300), "pink": (300, 345)}  # fmt: skip
"""Hue ranges (degrees) of the fine-tuning task's captions; unsaturated emoji are grey / black."""


def dominant_colour(image: torch.Tensor) -> str:
    """The colour word of an emoji (3, H, W) uint8 on white: grey / black when fewer than 30 %
    of its non-white pixels are saturated, else the hue range most of those fall in."""
    from matplotlib.colors import rgb_to_hsv

    x = image.float().div(255).reshape(3, -1).T  # (P, 3)
    x = x[x.min(1).values < 0.9]  # drop the white background
    if not len(x):
        return "grey"
    hsv = torch.from_numpy(rgb_to_hsv(x.numpy()))  # (P, 3)
    saturated = hsv[:, 1] > 0.35
    if saturated.float().mean() < 0.3:
        return "black" if hsv[:, 2].mean() < 0.45 else "grey"
    hue = hsv[saturated, 0] * 360
    votes = {
        name: int(((hue >= lo) | (hue < hi)).sum() if lo > hi else ((hue >= lo) & (hue < hi)).sum())
        for name, (lo, hi) in COLOURS.items()
    }
    return max(votes, key=votes.get)


def _emoji_split(root: Path) -> dict[str, Path]:
    """Every packaged emoji (both splits, 32 px) as PNG files; ``HELD_OUT`` per keyword (seeded)
    go to two class folders (``keywords/<keyword>``, ``colours/<colour>``) for zero-shot
    evaluation, the rest to two manifests: ``names.csv`` (caption: the Unicode name, the start's
    task) and ``colours.csv`` (caption: the emoji's dominant colour, the fine-tuning task)."""
    import random

    from PIL import Image

    from contrastkit.data.emoji import load_emoji

    items = []
    for split in ("train", "test"):
        ds = load_emoji(split=split, size=32)
        for i in range(len(ds)):
            items.append((int(ds.groups[i]), ds.texts[i], ds.images[i]))
    by_keyword: dict[str, list[int]] = {k: [] for k in KEYWORDS}
    for n, (_, text, _) in enumerate(items):
        hits = [k for k in KEYWORDS if k in text.split()]
        if len(hits) == 1:
            by_keyword[hits[0]].append(n)
    rng = random.Random(0)
    held = {n: k for k, ns in by_keyword.items() for n in rng.sample(ns, min(HELD_OUT, len(ns)))}
    (root / "images").mkdir(parents=True, exist_ok=True)
    names, colours = ["path,label,caption"], ["path,label,caption"]
    for n, (cp, text, image) in enumerate(items):
        png, colour = Image.fromarray(image.permute(1, 2, 0).numpy()), dominant_colour(image)
        if n in held:
            for folder in (root / "keywords" / held[n], root / "colours" / colour):
                folder.mkdir(parents=True, exist_ok=True)
                png.save(folder / f"{cp:x}.png")
            continue
        png.save(root / "images" / f"{cp:x}.png")
        names.append(f'images/{cp:x}.png,{colour},"{text}"')
        colours.append(f"images/{cp:x}.png,{colour},{colour}")
    (root / "names.csv").write_text("\n".join(names) + "\n")
    (root / "colours.csv").write_text("\n".join(colours) + "\n")
    for kind in ("keywords", "colours"):
        classes = sorted(p.name for p in (root / kind).iterdir())
        (root / f"{kind}.txt").write_text("\n".join(classes) + "\n")
    (root / "templates.txt").write_text("{}\n")  # the captions are bare names
    return {"names": root / "names.csv", "colours": root / "colours.csv"}


def _zero_shot(model: Path, root: Path, kind: str, alphas: str | None = None) -> Any:
    """``contrastkit eval-zero-shot MODEL root/kind --classes root/kind.txt --templates
    root/templates.txt [--interpolate ALPHAS]``: its JSON."""
    cmd = [sys.executable, "-m", "contrastkit.cli", "eval-zero-shot", str(model),
           str(root / kind), "--classes", str(root / f"{kind}.txt"),
           "--templates", str(root / "templates.txt")]  # fmt: skip
    if alphas:
        cmd += ["--interpolate", alphas]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


ALPHAS = "0,0.25,0.5,0.75,1"


def wiseft(quick: bool = False, stages: tuple[str, ...] = ("pre", "ft", "eval"),
           work: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """The forgetting / WiSE-FT table; ``stages`` run in ``work`` (kept between calls:
    ``wiseft-pre``, ``wiseft-ft``, ``wiseft-eval``)."""
    from contrastkit.export import export_run
    from contrastkit.train.config import load_config_dict
    from contrastkit.train.loop import train

    pre_steps, ft_steps = (3, 3) if quick else (PRE_STEPS, FT_STEPS)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    holder = tempfile.TemporaryDirectory() if work is None else None
    tmp = Path(holder.name) if holder is not None else Path(work)
    tmp.mkdir(parents=True, exist_ok=True)
    random_clip, start, data = tmp / "random", tmp / "start", tmp / "data"
    if "pre" in stages:
        _emoji_split(data)
        _tiny_clip(random_clip, **CLIP_SIZES)
        raw = _clip_raw(tmp, "pre", random_clip, pre_steps, data / "names.csv", PRE_LR, 128)
        export_run(train(load_config_dict(raw), tmp / "pre"), start, "hf")
    if "ft" in stages:
        for mode in ("full", "LiT"):
            raw = _clip_raw(tmp, f"ft-{mode}", start, ft_steps, data / "colours.csv", FT_LR, 128)
            if mode == "LiT":
                raw["model"]["options"]["lock_image"] = True
            train(load_config_dict(raw), tmp / f"ft-{mode}")
    if "eval" in stages:

        def row(model: str, alpha: Any, kw: dict, bl: dict) -> dict[str, Any]:
            return {"model": model, "alpha": alpha,
                    "keywords top-1": kw["zero-shot top-1"], "keywords top-5": kw["zero-shot top-5"],
                    "colours top-1": bl["zero-shot top-1"], "colours top-5": bl["zero-shot top-5"]}  # fmt: skip

        for name, folder in (("random init", random_clip), ("start (emoji names)", start)):
            rows.append(row(name, "-", _zero_shot(folder, data, "keywords"),
                            _zero_shot(folder, data, "colours")))  # fmt: skip
        for mode in ("full", "LiT"):
            run = tmp / f"ft-{mode}"
            kw = _zero_shot(run, data, "keywords", ALPHAS)["sweep"]
            bl = _zero_shot(run, data, "colours", ALPHAS)["sweep"]
            for a, b in zip(kw, bl, strict=True):
                rows.append(row(f"fine-tuned on colours, {mode}", a["alpha"], a, b))
    if holder is not None:
        holder.cleanup()
    rows = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]
    return {
        "title": "Forgetting and WiSE-FT: a tiny CLIP on emoji names, fine-tuned on colour captions",
        "rows": rows,
        "notes": f"tiny CLIPModel {CLIP_SIZES} at 32 px, random init; start: {pre_steps} steps "
        f"emoji <-> Unicode name (lr {PRE_LR}, batch 128), exported --format hf; fine-tuning "
        f"from that folder: {ft_steps} steps emoji <-> dominant colour (lr {FT_LR}, batch 128), "
        "full and LiT; alpha 0 = the start, 1 = fine-tuned (eval-zero-shot --interpolate). "
        f"Zero-shot on {HELD_OUT} held-out emoji per keyword ({len(KEYWORDS)} keywords, "
        "template '{}'): 'keywords' = the start's task (which keyword its name holds), "
        "'colours' = the fine-tuning task (its dominant colour). "
        f"Stages {', '.join(stages)}: {time.perf_counter() - t0:.0f} s.",
    }


PRE_STEPS, PRE_LR, FT_STEPS, FT_LR = 100, 1e-3, 60, 3e-4


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
