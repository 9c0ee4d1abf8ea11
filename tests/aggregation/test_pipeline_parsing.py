"""Building pipelines from configuration strings and TOML lists, and refusing bad ones."""

from __future__ import annotations

import tomllib

import pytest

from ztfl.aggregation import PipelineConfigError, build_pipeline, parse_steps


def test_arrow_string_builds_the_steps_in_order() -> None:
    pipeline = build_pipeline("arc -> nnm -> trimmed_mean(beta=0.25)", num_byzantine=1)
    assert [step.name for step in pipeline.pre_steps] == ["arc", "nnm"]
    assert pipeline.rule.name == "trimmed_mean"
    assert pipeline.description == "arc -> nnm -> trimmed_mean(beta=0.25)"


def test_unicode_arrow_is_the_same_as_ascii_arrow() -> None:
    ascii_arrow = build_pipeline("arc -> nnm -> trimmed_mean(beta=0.25)", num_byzantine=1)
    unicode_arrow = build_pipeline("arc→nnm  →  trimmed_mean(beta=0.25)", num_byzantine=1)
    assert unicode_arrow.specs == ascii_arrow.specs
    assert unicode_arrow.description == ascii_arrow.description


def test_toml_list_with_names_and_tables_is_the_same_as_the_string() -> None:
    config = tomllib.loads('pipeline = ["arc", "nnm", { name = "trimmed_mean", beta = 0.25 }]\n')
    from_toml = build_pipeline(config["pipeline"], num_byzantine=1)
    from_string = build_pipeline("arc -> nnm -> trimmed_mean(beta=0.25)", num_byzantine=1)
    assert from_toml.specs == from_string.specs


def test_toml_list_items_may_carry_parameters_as_text() -> None:
    pipeline = build_pipeline(["clip(max_norm=2)", "median"], num_byzantine=1)
    assert pipeline.description == "clip(max_norm=2) -> median"


def test_parameters_are_parsed_as_int_float_bool_or_text() -> None:
    (spec,) = parse_steps("step(a=3, b=0.5, c=1e3, d=true, e=False, f='x', g=word)")
    assert dict(spec.params) == {
        "a": 3,
        "b": 0.5,
        "c": 1000.0,
        "d": True,
        "e": False,
        "f": "x",
        "g": "word",
    }


def test_integer_is_accepted_where_a_float_is_expected() -> None:
    pipeline = build_pipeline("clip(max_norm=3) -> median", num_byzantine=1)
    assert pipeline.pre_steps[0].max_norm == 3.0  # type: ignore[attr-defined]
    assert isinstance(pipeline.pre_steps[0].max_norm, float)  # type: ignore[attr-defined]


def test_every_registered_step_builds_with_its_defaults() -> None:
    for description in (
        "clip(max_norm=1) -> mean",
        "arc -> median",
        "nnm -> trimmed_mean",
        "bucketing -> krum",
        "multi_krum",
        "bulyan",
        "geometric_median",
        "centered_clipping",
    ):
        assert build_pipeline(description, num_byzantine=0).description == description


def test_unknown_step_is_refused_with_the_known_names() -> None:
    with pytest.raises(PipelineConfigError, match=r"unknown aggregation rule 'krumm'.*multi_krum"):
        build_pipeline("krumm", num_byzantine=1)
    with pytest.raises(PipelineConfigError, match=r"unknown pre-aggregation step 'nmm'.*nnm"):
        build_pipeline("nmm -> median", num_byzantine=1)


def test_unknown_parameter_is_refused_with_the_accepted_ones() -> None:
    with pytest.raises(
        PipelineConfigError,
        match=r"geometric_median: unknown parameter\(s\) eps; "
        r"accepted: max_iterations, smoothing, tolerance",
    ):
        build_pipeline("geometric_median(eps=1e-3)", num_byzantine=1)


def test_unknown_parameter_of_a_step_without_parameters_says_none_are_accepted() -> None:
    with pytest.raises(PipelineConfigError, match="accepted: none"):
        build_pipeline("arc(strength=2) -> median", num_byzantine=1)


def test_the_name_field_is_not_a_configurable_parameter() -> None:
    with pytest.raises(PipelineConfigError, match="unknown parameter"):
        build_pipeline("median(name=mean)", num_byzantine=1)


@pytest.mark.parametrize(
    "description",
    [
        "bucketing(bucket_size=2.5) -> median",
        "bucketing(bucket_size=true) -> median",
        "trimmed_mean(beta=abc)",
        "clip(max_norm=yes) -> median",
        "multi_krum(num_selected=2.0)",
    ],
)
def test_parameter_of_the_wrong_type_is_refused(description: str) -> None:
    with pytest.raises(PipelineConfigError, match="must be"):
        build_pipeline(description, num_byzantine=1)


def test_toml_table_value_of_an_unsupported_type_is_refused() -> None:
    with pytest.raises(PipelineConfigError, match="unsupported value"):
        build_pipeline([{"name": "trimmed_mean", "beta": [0.1]}], num_byzantine=1)


def test_toml_table_without_a_name_is_refused() -> None:
    with pytest.raises(PipelineConfigError, match="'name'"):
        build_pipeline([{"beta": 0.1}], num_byzantine=1)


@pytest.mark.parametrize("description", ["arc", "clip(max_norm=1) -> nnm", "nnm -> bucketing"])
def test_pre_aggregation_step_last_is_refused(description: str) -> None:
    with pytest.raises(PipelineConfigError, match="must end with an aggregation rule"):
        build_pipeline(description, num_byzantine=1)


def test_aggregation_rule_before_the_last_step_is_refused() -> None:
    with pytest.raises(PipelineConfigError, match="unknown pre-aggregation step 'median'"):
        build_pipeline("median -> krum", num_byzantine=1)


@pytest.mark.parametrize("description", ["", "   ", " -> ", []])
def test_empty_pipeline_is_refused(description: str | list[str]) -> None:
    with pytest.raises(PipelineConfigError, match="at least a final rule"):
        build_pipeline(description, num_byzantine=1)


@pytest.mark.parametrize(
    "description", ["median(", "krum(f)", "trimmed mean", "9lives", "median(beta=0.1"]
)
def test_malformed_step_text_is_refused(description: str) -> None:
    with pytest.raises(PipelineConfigError):
        build_pipeline(description, num_byzantine=1)


def test_pipeline_description_of_another_type_is_refused() -> None:
    with pytest.raises(PipelineConfigError, match="string or a list"):
        build_pipeline(42, num_byzantine=1)  # type: ignore[arg-type]


def test_negative_num_byzantine_is_refused() -> None:
    with pytest.raises(PipelineConfigError, match="num_byzantine"):
        build_pipeline("median", num_byzantine=-1)


@pytest.mark.parametrize(
    "description",
    [
        "clip(max_norm=0) -> median",
        "clip(max_norm=-1) -> median",
        "bucketing(bucket_size=0) -> median",
        "trimmed_mean(beta=0.5)",
        "trimmed_mean(beta=-0.1)",
        "centered_clipping(radius=0)",
        "centered_clipping(iterations=0)",
    ],
)
def test_out_of_range_parameter_is_refused_when_built(description: str) -> None:
    with pytest.raises(PipelineConfigError):
        build_pipeline(description, num_byzantine=0)


def test_the_stated_pipeline_names_every_default_and_the_byzantine_count() -> None:
    pipeline = build_pipeline("bucketing -> nnm -> trimmed_mean", num_byzantine=4)
    assert (
        pipeline.stated
        == "bucketing(bucket_size=2) -> nnm -> trimmed_mean(beta=None); num_byzantine=4"
    )


def test_the_stated_pipeline_shows_configured_parameters_as_the_step_holds_them() -> None:
    pipeline = build_pipeline("clip(max_norm=2) -> median", num_byzantine=1)
    assert pipeline.stated == "clip(max_norm=2.0) -> median; num_byzantine=1"
