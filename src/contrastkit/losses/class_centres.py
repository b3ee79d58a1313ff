"""Shared pieces of the class-centre losses (ArcFace, CosFace, Sub-center ArcFace, Proxy-NCA,
Proxy Anchor): the centres parameter, its shard under ``shard_classes``, example inputs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import contrastkit.collectives as cd
from contrastkit.functional.class_logits import class_shard


def centre_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The class-centre parameters (the ``weight`` of each loss module built with
    :func:`centres`, marked by its class attribute ``class_centres = "weight"``) inside
    ``module``, which trainers optimise apart (:func:`contrastkit.train.loop.make_optimizer`).

    >>> from contrastkit.losses import create_loss
    >>> [tuple(p.shape) for p in centre_parameters(create_loss("arcface", num_classes=3,
    ...                                                          embedding_dim=4))]
    [(3, 4)]
    """
    out: list[nn.Parameter] = []
    for m in module.modules():
        name = getattr(type(m), "class_centres", None)
        p = getattr(m, name, None) if isinstance(name, str) else None
        if isinstance(p, nn.Parameter) and p.requires_grad and all(p is not q for q in out):
            out.append(p)
    return out


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
    return value


def centres(
    num_classes: int,
    embedding_dim: int,
    *,
    num_subcenters: int = 1,
    shard_classes: bool = False,
    std: float | None = 0.01,
) -> nn.Parameter:
    """The ``weight`` parameter ``(C * K, D)``, class-major; with ``shard_classes`` under
    ``torch.distributed`` only this rank's classes (:func:`class_shard`), so build the module
    after ``init_process_group``. ``std``: normal init (insightface's 0.01); None: Kaiming
    normal (fan out), Proxy Anchor's.

    >>> centres(10, 4, num_subcenters=3).shape
    torch.Size([30, 4])
    """
    _positive_int("num_classes", num_classes)
    _positive_int("embedding_dim", embedding_dim)
    _positive_int("num_subcenters", num_subcenters)
    rows = num_classes
    if shard_classes and cd.get_world_size() > 1:
        start, stop = class_shard(num_classes, cd.get_rank(), cd.get_world_size())
        rows = stop - start
    weight = torch.empty(rows * num_subcenters, embedding_dim)
    if std is None:
        nn.init.kaiming_normal_(weight, mode="fan_out")
    else:
        nn.init.normal_(weight, std=std)
    return nn.Parameter(weight)


class StreamedCentreLoss(nn.Module):
    """Base of the class-centre losses whose logits stream through the engine
    (:mod:`contrastkit.functional.class_logits`): it holds ``weight: (C * K, D)`` and the engine
    options (``block_size``, ``sample_fraction``, ``shard_classes``) and declares how the module
    is called (``inputs = "labelled"``: ``forward(embeddings (B, D), labels (B,))``).
    Subclasses keep their own ``__init__`` signature (the registry reads it) and ``forward``.
    """

    inputs = "labelled"
    class_centres = "weight"  # trainers give it SGD: contrastkit.train.optimizer
    distributed = "local"

    def _init_centres(
        self,
        num_classes: int,
        embedding_dim: int,
        *,
        num_subcenters: int = 1,
        block_size: int,
        sample_fraction: float,
        shard_classes: bool,
    ) -> None:
        self.num_classes, self.embedding_dim = num_classes, embedding_dim
        self.weight = centres(
            num_classes, embedding_dim, num_subcenters=num_subcenters, shard_classes=shard_classes
        )
        self.block_size, self.sample_fraction = block_size, float(sample_fraction)
        self.shard_classes = bool(shard_classes)

    def engine_options(self) -> dict[str, object]:
        """The keyword arguments every streamed class-logit loss takes."""
        return {
            "block_size": self.block_size,
            "sample_fraction": self.sample_fraction,
            "shard_classes": self.shard_classes,
        }

    @classmethod
    def example_inputs(cls, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Small float64 positional inputs of ``forward`` (D = 16: a prefix of the default
        ``embedding_dim``, as a Matryoshka wrapper passes; C = 10)."""
        return labelled_example(generator)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, " + ", ".join(
            f"{k}={v}" for k, v in self.repr_options().items()
        )

    def repr_options(self) -> dict[str, object]:
        """The loss's own hyper-parameters, shown by ``repr``."""
        return {}


def labelled_example(
    generator: torch.Generator, dim: int = 16, num_classes: int = 10, batch: int = 8
) -> tuple[Tensor, Tensor]:
    """Float64 ``(B, D)`` embeddings and ``(B,)`` labels with repeated classes in ``[0, C)``.

    >>> x, y = labelled_example(torch.Generator().manual_seed(0))
    >>> x.shape, y.tolist()
    (torch.Size([8, 16]), [0, 2, 4, 6, 0, 2, 4, 6])
    """
    x = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    return x, (torch.arange(batch) % 4 * 2) % num_classes  # (B,)
