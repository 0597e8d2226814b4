"""comptlib: Chain-of-Models Pre-Training for vision and language families."""

from comptlib import families  # the built-in families; calling it is the deprecated list_families()
from comptlib.callbacks import Callback
from comptlib.chain import Chain
from comptlib.errors import ComptError, ConfigError, DivergenceError
from comptlib.family import Family, Outputs, family_of, list_families, register_family
from comptlib.grower import Grower, GrowthCheck, GrowthError, grow
from comptlib.portable import load
from comptlib.settings import Optim, Runtime
from comptlib.transferer import FeatureMSE, LogitKL, Transferer, WeightedSum

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "Chain",
    "ComptError",
    "ConfigError",
    "DivergenceError",
    "FeatureMSE",
    "Family",
    "Grower",
    "GrowthCheck",
    "GrowthError",
    "LogitKL",
    "Optim",
    "Outputs",
    "Runtime",
    "Transferer",
    "WeightedSum",
    "families",
    "family_of",
    "grow",
    "list_families",
    "load",
    "register_family",
]
