"""Attacks by name, or by a dotted path to your own factory.

``"ipm(epsilon=10)"`` names a built-in attack with parameters (the same syntax
as aggregation pipelines); ``"my_package.attacks:make_attack(strength=3)"`` adds
one: the factory receives the parameters and returns an object with ``forge``
(an UpdateAttack) and/or ``poison`` (a DataAttack).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from ztfl.aggregation import parse_steps

from .alie import ALittleIsEnough
from .base import DataAttack, UpdateAttack
from .gaussian import GaussianNoise
from .ipm import InnerProductManipulation
from .label_flip import LabelFlip
from .scaling import Scaling
from .sign_flip import SignFlip

BUILTIN_ATTACKS: Mapping[str, Callable[..., Any]] = {
    "sign_flip": SignFlip,
    "scaling": Scaling,
    "gaussian": GaussianNoise,
    "label_flip": LabelFlip,
    "alie": ALittleIsEnough,
    "ipm": InnerProductManipulation,
}


class AttackConfigError(ValueError):
    """The attack description names nothing usable."""


@dataclass(frozen=True)
class ResolvedAttack:
    """An attack ready for a simulation: its description and its two possible parts."""

    description: str
    update_attack: UpdateAttack | None
    data_attack: DataAttack | None


def resolve_attack(description: str) -> ResolvedAttack:
    """Build the attack a scenario names; ``"none"`` means honest clients only."""
    text = description.strip()
    if text in ("", "none"):
        return ResolvedAttack("none", None, None)
    target, params = _split_target(text)
    builtin = BUILTIN_ATTACKS.get(target)
    if builtin is not None:
        _check_builtin_params(target, builtin, params)
    factory = builtin or _import_factory(target)
    try:
        attack = factory(**params)
    except TypeError as error:
        raise AttackConfigError(f"attack {target!r}: {error}") from error
    update_attack = attack if isinstance(attack, UpdateAttack) else None
    data_attack = attack if isinstance(attack, DataAttack) else None
    if update_attack is None and data_attack is None:
        raise AttackConfigError(f"attack {target!r} has neither forge() nor poison()")
    return ResolvedAttack(text, update_attack, data_attack)


def _split_target(text: str) -> tuple[str, dict[str, Any]]:
    """Separate ``target(params)``; the target may be a dotted ``module:factory`` path."""
    head, sep, tail = text.partition("(")
    target = head.strip()
    if not sep:
        return target, {}
    try:
        steps = parse_steps(f"attack({tail}")
    except ValueError as error:
        raise AttackConfigError(
            f"cannot parse attack {text!r}; write name or name(key=value, ...)"
        ) from error
    if len(steps) != 1:
        raise AttackConfigError(f"attack {text!r} names more than one attack")
    return target, dict(steps[0].params)


def _check_builtin_params(
    target: str, factory: Callable[..., Any], params: Mapping[str, Any]
) -> None:
    """Refuse a word where a built-in attack takes a number, before a simulation starts.

    The parameter syntax keeps unparseable values as strings; without this check
    ``ipm(epsilon=ten)`` would only fail when the first update is forged.
    """
    hints = get_type_hints(factory)
    for key, value in params.items():
        expected = hints.get(key)
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if expected is int and not is_int:
            raise AttackConfigError(f"attack {target!r}: {key} must be an integer, got {value!r}")
        if expected in (float, float | None) and not (is_int or isinstance(value, float)):
            raise AttackConfigError(f"attack {target!r}: {key} must be a number, got {value!r}")


def _import_factory(target: str) -> Callable[..., Any]:
    module_name, sep, attribute = target.partition(":")
    if not sep:
        known = ", ".join(sorted(BUILTIN_ATTACKS))
        raise AttackConfigError(
            f"unknown attack {target!r}; built-in: {known}, or 'module:factory'"
        )
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise AttackConfigError(f"cannot load attack {target!r}: {error}") from error
    if not callable(factory):
        raise AttackConfigError(f"{target!r} is not callable")
    return factory  # type: ignore[no-any-return]
