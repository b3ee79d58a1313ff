"""PNG plots of a run (matplotlib, Agg backend: no display needed).

Each ``plot_*`` function writes one PNG and returns its path, or None when the run has no data
for it (e.g. no temperature for a margin loss).

>>> import torch
>>> x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
>>> pca_2d(x).shape
torch.Size([50, 2])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pca_2d(x: Tensor) -> Tensor:
    """Project ``x: (N, D)`` on its top-2 principal components -> (N, 2)."""
    x = x.float() - x.float().mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return x @ v[:2].T


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in records:
        if key in r and isinstance(r[key], (int, float)):
            steps.append(r["step"])
            values.append(r[key])
    return steps, values


def _marker(n: int) -> str | None:
    """Dots on short curves: a handful of logged steps stay visible (a line of 1 point is not)."""
    return "o" if n <= 40 else None


def _save(fig: Any, path: Path) -> None:
    """Render ``fig`` as PNG in memory, then write it atomically (a reader never sees half)."""
    import io

    from contrastkit.atomic import write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    write_bytes(path, buffer.getvalue())


def plot_curves(records: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """loss.png (loss + lr) and temperature.png (logged only when it is learned)."""
    plt = _plt()
    paths: dict[str, Path] = {}
    steps, loss = _series(records, "loss")
    if steps:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.2))
        ax[0].plot(steps, loss, marker=_marker(len(steps)))
        ax[0].set(xlabel="step", ylabel="training loss", title="loss")
        s_lr, lr = _series(records, "lr")
        ax[1].plot(s_lr, lr, color="tab:orange", marker=_marker(len(s_lr)))
        ax[1].set(xlabel="step", ylabel="learning rate", title="learning rate")
        fig.tight_layout()
        paths["loss"] = out / "loss.png"
        _save(fig, paths["loss"])
        plt.close(fig)
    steps, temp = _series(records, "temperature")
    if steps:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(steps, temp, color="tab:green", marker=_marker(len(steps)))
        ax.set(xlabel="step", ylabel="temperature", title="temperature")
        fig.tight_layout()
        paths["temperature"] = out / "temperature.png"
        _save(fig, paths["temperature"])
        plt.close(fig)
    return paths


def plot_monitors(records: list[dict[str, Any]], out: Path) -> Path | None:
    """Collapse monitors over time: one panel per logged signal."""
    rows = [r for r in records if isinstance(r.get("monitor"), dict)]
    if not rows:
        return None
    plt = _plt()
    keys = [k for k, v in rows[-1]["monitor"].items() if isinstance(v, (int, float))]
    fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = [r["monitor"].get(key, float("nan")) for r in rows]
        ax.plot([r["step"] for r in rows], values, marker=_marker(len(rows)))
        ax.set(xlabel="step", title=key)
    fig.tight_layout()
    path = out / "monitors.png"
    _save(fig, path)
    plt.close(fig)
    return path


def plot_similarity_hist(pos: Tensor, neg: Tensor, out: Path) -> Path:
    """Histogram of positive-pair vs negative-pair cosine similarities."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    bins = torch.linspace(-1, 1, 81).tolist()
    ax.hist(neg.tolist(), bins=bins, alpha=0.6, density=True, label=f"negatives ({len(neg)})")
    ax.hist(pos.tolist(), bins=bins, alpha=0.6, density=True, label=f"positives ({len(pos)})")
    ax.set(xlabel="cosine similarity", ylabel="density", title="positive vs negative pairs")
    ax.legend()
    fig.tight_layout()
    path = out / "similarity_hist.png"
    _save(fig, path)
    plt.close(fig)
    return path


def plot_projection(
    embeddings: Tensor, labels: Tensor, class_names: list[str] | None, out: Path
) -> Path:
    """2-D PCA of test embeddings coloured by label (at most 5,000 points)."""
    plt = _plt()
    n = min(5000, embeddings.shape[0])
    xy = pca_2d(embeddings[:n])
    lab = labels[:n]
    fig, ax = plt.subplots(figsize=(6.5, 5))
    cmap = plt.get_cmap("tab10" if int(lab.max()) < 10 else "tab20")
    for c in sorted(set(lab.tolist())):
        sel = lab == c
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=3, color=cmap(c % cmap.N), label=name)
    if len(set(lab.tolist())) <= 20:
        ax.legend(markerscale=4, fontsize=7, loc="best")
    ax.set(title="test embeddings, PCA to 2-D", xticks=[], yticks=[])
    fig.tight_layout()
    path = out / "projection.png"
    _save(fig, path)
    plt.close(fig)
    return path


def plot_neighbour_grid(
    rows: list[tuple[Tensor, str, list[tuple[Tensor, str]]]], out: Path
) -> Path:
    """Query image + its nearest neighbours per row, each titled with its label."""
    plt = _plt()
    k = max(len(r[2]) for r in rows)
    fig, axes = plt.subplots(
        len(rows), k + 1, figsize=(1.3 * (k + 1), 1.45 * len(rows)), squeeze=False
    )
    for i, (query, qlabel, hits) in enumerate(rows):
        cells = [(query, f"query: {qlabel}"), *hits]
        for j, ax in enumerate(axes[i]):
            ax.axis("off")
            if j < len(cells):
                img, title = cells[j]
                img = img.float()
                if img.shape[0] == 1:
                    ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(img.permute(1, 2, 0).clamp(0, 1))
                ax.set_title(title, fontsize=7, color="black" if j == 0 else "dimgray")
    fig.tight_layout()
    path = out / "neighbours.png"
    _save(fig, path)
    plt.close(fig)
    return path


def plot_roc(curves: dict[str, tuple[Tensor, Tensor]], out: Path) -> Path:
    """ROC curves of verification pairs on a log FAR axis: ``curves`` maps a name to (scores
    (N,), same (N,) bool); TAR against FAR from 1 / (different pairs) to 1, with the FAR
    targets 1e-4 .. 1e-1 marked."""
    from contrastkit.eval.verification import roc_auc, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    floor = 1.0
    for name, (scores, same) in curves.items():
        fpr, tpr, _ = roc_curve(scores, same, drop_intermediate=False)
        different = max(int((~same.bool()).sum()), 1)
        floor = min(floor, 1.0 / different)
        auc = roc_auc(fpr, tpr)
        keep = fpr > 0  # log axis: FAR 0 has no place on it
        ax.step(
            fpr[keep].tolist(), tpr[keep].tolist(), where="post", label=f"{name} (AUC {auc:.3f})"
        )
    for far in (1e-4, 1e-3, 1e-2, 1e-1):
        if far >= floor:
            ax.axvline(far, color="lightgray", lw=0.8, zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set(xlabel="false accept rate (log)", ylabel="true accept rate", title="verification ROC")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = out / "roc.png"
    _save(fig, path)
    plt.close(fig)
    return path


def plot_pair_grid(images: Tensor, scores: Tensor, title: str, path: Path) -> Path:
    """One column per pair, its two images stacked, titled with the pair's score: ``images``
    (K, 2, C, H, W) uint8 or float in [0, 1], ``scores`` (K,)."""
    plt = _plt()
    k = images.shape[0]
    fig, axes = plt.subplots(2, k, figsize=(1.2 * k + 0.4, 2.9), squeeze=False)
    pics = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    for j in range(k):
        for i in range(2):
            ax = axes[i][j]
            ax.axis("off")
            img = pics[j, i]
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1))
        axes[0][j].set_title(f"{float(scores[j]):.3f}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
