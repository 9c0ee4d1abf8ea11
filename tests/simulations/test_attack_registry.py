"""Resolving an attack description: built-ins with parameters, "none", and user factories."""

from __future__ import annotations

import pytest

from ztfl.simulations.attacks import (
    BUILTIN_ATTACKS,
    ALittleIsEnough,
    AttackConfigError,
    GaussianNoise,
    InnerProductManipulation,
    LabelFlip,
    Scaling,
    SignFlip,
    resolve_attack,
)

FACTORIES = "ztfl_test_attacks.factories"


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("sign_flip(scale=5)", SignFlip(scale=5)),
        ("scaling(factor=10)", Scaling(factor=10)),
        ("gaussian(std=0.25)", GaussianNoise(std=0.25)),
        ("alie(z=1.5)", ALittleIsEnough(z=1.5)),
        ("alie", ALittleIsEnough()),
        ("ipm(epsilon=10)", InnerProductManipulation(epsilon=10)),
        ("ipm", InnerProductManipulation()),
    ],
)
def test_a_builtin_update_attack_resolves_with_its_parameters(
    description: str, expected: object
) -> None:
    resolved = resolve_attack(description)
    assert resolved.update_attack == expected
    assert resolved.data_attack is None
    assert resolved.description == description


def test_label_flip_resolves_as_a_data_attack_only() -> None:
    resolved = resolve_attack("label_flip")
    assert resolved.data_attack == LabelFlip()
    assert resolved.update_attack is None


def test_every_builtin_attack_resolves_by_its_name() -> None:
    for name in BUILTIN_ATTACKS:
        resolved = resolve_attack(name)
        assert resolved.update_attack is not None or resolved.data_attack is not None


@pytest.mark.parametrize("description", ["none", "", "  none  "])
def test_none_means_honest_clients_only(description: str) -> None:
    resolved = resolve_attack(description)
    assert (resolved.description, resolved.update_attack, resolved.data_attack) == (
        "none",
        None,
        None,
    )


def test_a_description_is_trimmed_of_surrounding_space() -> None:
    assert resolve_attack("  ipm(epsilon=2)  ").description == "ipm(epsilon=2)"


def test_a_dotted_path_factory_resolves_with_its_parameters() -> None:
    resolved = resolve_attack(f"{FACTORIES}:make_pull_towards_zero(strength=3)")
    assert resolved.update_attack is not None
    assert resolved.update_attack.needs_honest_updates
    assert type(resolved.update_attack).__name__ == "PullTowardsZero"
    assert resolved.update_attack.strength == 3  # type: ignore[attr-defined]


def test_a_dotted_path_factory_resolves_without_parameters() -> None:
    resolved = resolve_attack(f"{FACTORIES}:make_pull_towards_zero")
    assert resolved.update_attack.strength == 1.0  # type: ignore[union-attr]


def test_a_factory_whose_object_neither_forges_nor_poisons_is_refused() -> None:
    with pytest.raises(AttackConfigError, match=r"neither forge\(\) nor poison\(\)"):
        resolve_attack(f"{FACTORIES}:make_inert")


def test_an_unknown_attack_name_is_refused_listing_the_builtins() -> None:
    with pytest.raises(AttackConfigError, match="built-in: alie, gaussian, ipm"):
        resolve_attack("flip_everything")


def test_a_factory_in_a_missing_module_is_refused() -> None:
    with pytest.raises(AttackConfigError, match="cannot load attack"):
        resolve_attack("ztfl_test_attacks.no_such_module:make")


def test_a_missing_factory_in_an_existing_module_is_refused() -> None:
    with pytest.raises(AttackConfigError, match="cannot load attack"):
        resolve_attack(f"{FACTORIES}:make_nothing")


def test_a_factory_path_to_something_not_callable_is_refused() -> None:
    with pytest.raises(AttackConfigError, match="is not callable"):
        resolve_attack(f"{FACTORIES}:NOT_CALLABLE")


def test_an_unknown_parameter_is_refused() -> None:
    with pytest.raises(AttackConfigError, match="eps"):
        resolve_attack("ipm(eps=10)")


def test_an_unknown_parameter_of_a_factory_is_refused() -> None:
    with pytest.raises(AttackConfigError, match="power"):
        resolve_attack(f"{FACTORIES}:make_pull_towards_zero(power=3)")


@pytest.mark.parametrize(
    "description",
    ["ipm(epsilon=", "ipm(epsilon=10", "ipm(10)", "ipm(epsilon=10)x", f"{FACTORIES}:make("],
)
def test_malformed_parameters_are_refused_as_an_attack_error(description: str) -> None:
    # Regression: these raised the aggregation parser's PipelineConfigError,
    # whose message spoke of a pipeline step called 'attack'.
    with pytest.raises(AttackConfigError, match="cannot parse attack"):
        resolve_attack(description)


def test_a_chain_of_attacks_is_refused() -> None:
    # Regression: this raised a bare "too many values to unpack" ValueError.
    with pytest.raises(AttackConfigError, match="more than one attack"):
        resolve_attack("ipm(epsilon=10) -> sign_flip")


@pytest.mark.parametrize(
    ("description", "parameter"),
    [
        ("ipm(epsilon=ten)", "epsilon"),
        ("sign_flip(scale=true)", "scale"),
        ("alie(z=high)", "z"),
        ("label_flip(num_classes=2.5)", "num_classes"),
    ],
)
def test_a_builtin_parameter_of_the_wrong_type_is_refused_before_any_run(
    description: str, parameter: str
) -> None:
    # Regression: 'ipm(epsilon=ten)' was accepted and only failed when the
    # first update was forged, in the middle of a simulation.
    with pytest.raises(AttackConfigError, match=parameter):
        resolve_attack(description)


def test_an_integer_is_accepted_where_a_builtin_takes_a_number() -> None:
    attack: object = resolve_attack("gaussian(std=1)").update_attack
    assert attack == GaussianNoise(std=1)
