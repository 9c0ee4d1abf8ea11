"""Attacks as pluggable behaviours of the clients an adversary controls."""

from .alie import ALittleIsEnough, alie_z_max
from .base import DataAttack, UpdateAttack
from .gaussian import GaussianNoise
from .ipm import InnerProductManipulation
from .label_flip import LabelFlip
from .registry import BUILTIN_ATTACKS, AttackConfigError, ResolvedAttack, resolve_attack
from .scaling import Scaling
from .sign_flip import SignFlip

__all__ = [
    "BUILTIN_ATTACKS",
    "ALittleIsEnough",
    "AttackConfigError",
    "DataAttack",
    "GaussianNoise",
    "InnerProductManipulation",
    "LabelFlip",
    "ResolvedAttack",
    "Scaling",
    "SignFlip",
    "UpdateAttack",
    "alie_z_max",
    "resolve_attack",
]
