"""Thin ``nn.Module`` wrappers over :mod:`contrastkit.functional`, one per file, and their registry."""

from contrastkit.losses.contrastive_margin import ContrastiveMargin
from contrastkit.losses.info_nce import InfoNCE
from contrastkit.losses.nt_xent import NTXent
from contrastkit.losses.preference import PreferenceLoss
from contrastkit.losses.registry import LOSSES, create_loss, list_losses, register
from contrastkit.losses.sigmoid_contrastive import SigmoidContrastive
from contrastkit.losses.supcon import SupCon
from contrastkit.losses.temperature import LearnableTemperature
from contrastkit.losses.triplet import TripletMargin

__all__ = [
    "LOSSES",
    "ContrastiveMargin",
    "InfoNCE",
    "LearnableTemperature",
    "NTXent",
    "PreferenceLoss",
    "SigmoidContrastive",
    "SupCon",
    "TripletMargin",
    "create_loss",
    "list_losses",
    "register",
]
