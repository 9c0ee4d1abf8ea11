"""Local training and evaluation on a client's own data, and the settings that bound them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ztfl.client.data import ClientData
from ztfl.client.models import (
    UnknownModelError,
    available_models,
    build_model,
    register_model,
)
from ztfl.client.trainer import (
    TrainingConfig,
    evaluate,
    load_weights,
    model_weights,
    train_update,
)

CPU = torch.device("cpu")


def trained_update(
    data: ClientData, config: TrainingConfig, model_seed: int = 0
) -> dict[str, np.ndarray]:
    return train_update(build_model("mlp", seed=model_seed), data, config, CPU).update


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(
    "settings",
    [
        {"local_epochs": 0},
        {"local_epochs": 101},
        {"learning_rate": 0.0},
        {"learning_rate": -0.1},
        {"learning_rate": 10.5},
        {"batch_size": 0},
        {"batch_size": 65_537},
    ],
)
def test_training_config_refuses_settings_outside_its_bounds(
    settings: dict[str, float],
) -> None:
    with pytest.raises(ValueError, match=next(iter(settings)).replace("_", "-")):
        TrainingConfig(**settings)  # type: ignore[arg-type]


def test_training_config_accepts_the_inclusive_bounds() -> None:
    TrainingConfig(local_epochs=1, learning_rate=10.0, batch_size=1)
    TrainingConfig(local_epochs=100, learning_rate=1e-9, batch_size=65_536)


# ------------------------------------------------------------------ training


def test_training_is_deterministic_for_a_fixed_seed(client_data: ClientData) -> None:
    config = TrainingConfig(local_epochs=1, seed=4)
    first, second = trained_update(client_data, config), trained_update(client_data, config)
    for name, values in first.items():
        np.testing.assert_array_equal(values, second[name])


def test_training_with_another_seed_shuffles_differently(client_data: ClientData) -> None:
    first = trained_update(client_data, TrainingConfig(local_epochs=1, seed=4))
    second = trained_update(client_data, TrainingConfig(local_epochs=1, seed=5))
    assert any(not np.array_equal(values, second[name]) for name, values in first.items())


def test_the_update_is_the_trained_weights_minus_the_starting_weights(
    client_data: ClientData,
) -> None:
    model = build_model("mlp", seed=0)
    start = model_weights(model)
    result = train_update(model, client_data, TrainingConfig(local_epochs=1), CPU)
    trained = model_weights(model)
    for name, update in result.update.items():
        np.testing.assert_allclose(update, trained[name] - start[name], rtol=0, atol=1e-7)


def test_training_lowers_the_loss_on_digits(client_data: ClientData) -> None:
    model = build_model("mlp", seed=0)
    before, _ = evaluate(model, client_data.train_features, client_data.train_labels, CPU)
    train_update(model, client_data, TrainingConfig(local_epochs=10, learning_rate=0.3), CPU)
    after, _ = evaluate(model, client_data.train_features, client_data.train_labels, CPU)
    _, test_accuracy = evaluate(model, client_data.test_features, client_data.test_labels, CPU)
    assert after < 0.5 * before
    assert test_accuracy > 0.5  # ten classes: chance is 0.1


def test_training_reports_the_examples_it_trained_on(client_data: ClientData) -> None:
    result = train_update(build_model("mlp", seed=0), client_data, TrainingConfig(), CPU)
    assert result.num_examples == client_data.num_train
    assert 0.0 <= result.accuracy <= 1.0
    assert result.loss > 0


def test_evaluating_on_no_examples_gives_zero_loss_and_accuracy() -> None:
    empty = torch.zeros(0, 64)
    labels = torch.zeros(0, dtype=torch.int64)
    assert evaluate(build_model("mlp", seed=0), empty, labels, CPU) == (0.0, 0.0)


# ------------------------------------------------------------------ weights


def test_load_weights_copies_the_weights_into_the_model() -> None:
    source = model_weights(build_model("mlp", seed=1))
    model = build_model("mlp", seed=2)
    load_weights(model, source)
    for name, values in model_weights(model).items():
        np.testing.assert_array_equal(values, source[name])


def test_load_weights_refuses_missing_and_unexpected_tensors() -> None:
    weights = model_weights(build_model("mlp", seed=0))
    weights["extra"] = weights.pop("layers.2.bias")
    with pytest.raises(ValueError, match=r"missing \['layers.2.bias'\], unexpected \['extra'\]"):
        load_weights(build_model("mlp"), weights)


def test_load_weights_refuses_a_wrong_shape() -> None:
    weights = model_weights(build_model("mlp", seed=0))
    weights["layers.2.bias"] = np.zeros(11, dtype=np.float32)
    with pytest.raises(ValueError, match=r"layers\.2\.bias: shape"):
        load_weights(build_model("mlp"), weights)


def test_load_weights_refuses_a_dtype_other_than_float32() -> None:
    weights = model_weights(build_model("mlp", seed=0))
    weights["layers.2.bias"] = weights["layers.2.bias"].astype(np.float16)
    with pytest.raises(ValueError, match="expected float32"):
        load_weights(build_model("mlp"), weights)


def test_model_weights_are_copies_that_do_not_follow_the_model() -> None:
    model = build_model("mlp", seed=0)
    weights = model_weights(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    np.testing.assert_array_equal(
        weights["layers.0.bias"], model_weights(build_model("mlp", seed=0))["layers.0.bias"]
    )


# ------------------------------------------------------------------ model registry


def test_a_seeded_model_has_reproducible_initial_weights() -> None:
    first, second = (
        model_weights(build_model("cnn", seed=9)),
        model_weights(build_model("cnn", seed=9)),
    )
    for name, values in first.items():
        np.testing.assert_array_equal(values, second[name])


def test_building_a_seeded_model_leaves_the_global_torch_generator_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("mlp", seed=9)
    torch.testing.assert_close(torch.rand(3), expected)


def test_an_unregistered_model_name_is_refused_listing_the_available_ones() -> None:
    with pytest.raises(UnknownModelError, match="available: cnn, mlp"):
        build_model("transformer")


def test_register_model_refuses_a_name_that_is_not_an_identifier() -> None:
    with pytest.raises(ValueError, match="identifiers"):
        register_model("my-model", lambda: torch.nn.Linear(64, 10))


def test_the_bundled_models_map_digits_to_ten_class_logits() -> None:
    features = torch.zeros(5, 64)
    for name in ("mlp", "cnn"):
        assert name in available_models()
        assert tuple(build_model(name, seed=0)(features).shape) == (5, 10)
