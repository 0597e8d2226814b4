"""comptlib: Chain-of-Models Pre-Training for vision and language families."""

from comptlib import families  # the built-in families; calling it is the deprecated list_families()
from comptlib.chain import Chain
from comptlib.family import Family, Outputs, family_of, list_families, register_family
from comptlib.grower import Grower, GrowthCheck, GrowthError, grow
from comptlib.transferer import FeatureMSE, LogitKL, Transferer, WeightedSum

__version__ = "0.1.0"

__all__ = [
    "Chain",
    "FeatureMSE",
    "Family",
    "Grower",
    "GrowthCheck",
    "GrowthError",
    "LogitKL",
    "Outputs",
    "Transferer",
    "WeightedSum",
    "families",
    "family_of",
    "grow",
    "list_families",
    "register_family",
]
