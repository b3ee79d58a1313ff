"""Thin ``nn.Module`` wrappers over :mod:`contrastkit.functional`, one per file, and their registry."""

from contrastkit.losses.angle import AnglE
from contrastkit.losses.arcface import ArcFace
from contrastkit.losses.barlow_twins import BarlowTwinsLoss
from contrastkit.losses.byol import BYOLLoss
from contrastkit.losses.circle import Circle
from contrastkit.losses.contrastive_margin import ContrastiveMargin
from contrastkit.losses.cosent import CoSENT
from contrastkit.losses.cosface import CosFace
from contrastkit.losses.debiased_contrastive import DebiasedContrastive
from contrastkit.losses.decoupled_contrastive import DecoupledContrastive
from contrastkit.losses.dino import DINOLoss
from contrastkit.losses.hard_negative_contrastive import HardNegativeContrastive
from contrastkit.losses.info_nce import InfoNCE
from contrastkit.losses.listwise_kl import ListwiseKL
from contrastkit.losses.margin_mse import MarginMSE
from contrastkit.losses.matryoshka import (
    Matryoshka,
    matryoshka,
    truncate_embeddings,
    wrap_matryoshka,
)
from contrastkit.losses.multi_similarity import MultiSimilarity
from contrastkit.losses.nt_xent import NTXent
from contrastkit.losses.preference import PreferenceLoss
from contrastkit.losses.proxy_anchor import ProxyAnchor
from contrastkit.losses.proxy_nca import ProxyNCA
from contrastkit.losses.registry import (
    LOSSES,
    LossSpec,
    check_loss_params,
    create_loss,
    list_losses,
    loss_defaults,
    loss_spec,
    register,
)
from contrastkit.losses.rerank import ListwiseCE, PointwiseBCE
from contrastkit.losses.sigmoid_contrastive import SigmoidContrastive
from contrastkit.losses.simsiam import SimSiamLoss
from contrastkit.losses.subcenter_arcface import SubCenterArcFace
from contrastkit.losses.supcon import SupCon
from contrastkit.losses.swav import SwAVLoss
from contrastkit.losses.temperature import LearnableTemperature
from contrastkit.losses.triplet import TripletMargin
from contrastkit.losses.vicreg import VICRegLoss

__all__ = [
    "LOSSES",
    "AnglE",
    "ArcFace",
    "BYOLLoss",
    "BarlowTwinsLoss",
    "Circle",
    "CoSENT",
    "ContrastiveMargin",
    "CosFace",
    "DINOLoss",
    "DebiasedContrastive",
    "DecoupledContrastive",
    "HardNegativeContrastive",
    "InfoNCE",
    "LearnableTemperature",
    "ListwiseCE",
    "ListwiseKL",
    "LossSpec",
    "MarginMSE",
    "Matryoshka",
    "MultiSimilarity",
    "NTXent",
    "PointwiseBCE",
    "PreferenceLoss",
    "ProxyAnchor",
    "ProxyNCA",
    "SigmoidContrastive",
    "SimSiamLoss",
    "SubCenterArcFace",
    "SupCon",
    "SwAVLoss",
    "TripletMargin",
    "VICRegLoss",
    "check_loss_params",
    "create_loss",
    "list_losses",
    "loss_defaults",
    "loss_spec",
    "matryoshka",
    "register",
    "truncate_embeddings",
    "wrap_matryoshka",
]
