"""Zero-shot classification: the functions against a loop written from the protocol, and the
eval-zero-shot command on a tiny CLIP folder and an image folder."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from contrastkit.eval.zero_shot import (
    ZeroShotClassifier,
    class_embeddings,
    zero_shot_accuracy,
)


def test_matches_a_loop_over_classes_and_templates():
    g = torch.Generator().manual_seed(0)
    table = {}

    def embed(texts):
        for t in texts:
            table.setdefault(t, torch.randn(8, generator=g))
        return torch.stack([table[t] for t in texts]) * 3.0  # unnormalised on purpose

    classes, templates = ["cat", "dog", "fish", "bird", "ant", "owl"], ["{}", "a {}.", "my {}"]
    got = class_embeddings(embed, classes, templates)
    items = torch.randn(20, 8, generator=g)
    labels = torch.randint(0, 6, (20,), generator=g)
    want_rows = []
    for name in classes:
        vecs = [F.normalize(table[t.format(name)], dim=0) for t in templates]
        want_rows.append(F.normalize(sum(vecs) / len(vecs), dim=0))
    want = torch.stack(want_rows)
    torch.testing.assert_close(got, want)
    top1 = top5 = 0
    for x, y in zip(items, labels):
        scores = [float(F.normalize(x, dim=0) @ c) for c in want]
        ranked = sorted(range(6), key=lambda i: -scores[i])
        top1 += ranked[0] == int(y)
        top5 += int(y) in ranked[:5]
    acc = zero_shot_accuracy(items, got, labels)
    assert acc == pytest.approx({"zero-shot top-1": top1 / 20, "zero-shot top-5": top5 / 20})
    clf = ZeroShotClassifier(embed, classes, templates)
    clf.update(items[:7], labels[:7])
    clf.update(items[7:], labels[7:])
    assert clf.compute() == pytest.approx(acc)


def test_bad_templates_and_labels_name_the_argument():
    with pytest.raises(ValueError, match="must contain"):
        class_embeddings(lambda t: torch.ones(len(t), 2), ["a"], ["no slot"])
    with pytest.raises(ValueError, match="labels must be class indices"):
        zero_shot_accuracy(torch.eye(2), torch.eye(2), torch.tensor([0, 2]))


def test_eval_zero_shot_command(tmp_path, capsys):
    pytest.importorskip("transformers")
    from PIL import Image
    from tests.pretrained.tiny_models import tiny_clip

    from contrastkit.cli import main

    folder = tiny_clip(tmp_path / "clip")
    data = tmp_path / "data"
    for k, name in enumerate(["red", "blue"]):
        (data / name).mkdir(parents=True)
        for i in range(3):
            color = (200, 20 * i, 0) if k == 0 else (0, 20 * i, 200)
            Image.new("RGB", (32, 32), color).save(data / name / f"{i}.png")
    classes = tmp_path / "classes.txt"
    classes.write_text("red\tred square\nblue\n")
    templates = tmp_path / "templates.txt"
    templates.write_text("a {}.\na photo of a {}.\n")
    args = ["eval-zero-shot", str(folder), str(data), "--classes", str(classes)]
    assert main([*args, "--templates", str(templates)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["items"] == 6 and out["classes"] == 2 and out["templates"] == 2
    assert 0.0 <= out["zero-shot top-1"] <= 1.0
    classes.write_text("red\n")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "lacks 1 of the data's classes (e.g. 'blue')" in err and "\n" not in err
