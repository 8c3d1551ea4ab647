from __future__ import annotations

import pytest
from pydantic import ValidationError

from aviary.behaviour import CIRCLE
from aviary.config import DataConfig, PipelineConfig, TrainConfig


def one_error(**data: object) -> str:
    with pytest.raises(ValidationError) as error:
        DataConfig.model_validate(data)
    assert error.value.error_count() == 1
    return str(error.value.errors()[0]["msg"])


def test_config_mistakes_are_one_line_before_anything_runs() -> None:
    assert "'x'" in one_error(features=["x", "y", "x"]) and "\n" not in one_error(features=["x", "y", "x"])
    assert "'class'" in one_error(features=["x", "class"])
    lacks = one_error(features=["a b", "c"], label="y", cases=[{"inputs": {"a b": 1.0}, "expect": 1}])
    assert lacks.endswith("data.cases[1] lacks ['c']")


def test_each_feature_carries_its_kind_and_the_list_spelling_still_reads() -> None:
    mine = DataConfig.model_validate({"features": {"amount": "auto", "code": "categorical"}, "label": "y"})
    assert mine.columns == ("amount", "code") and mine.categorical == ("code",)
    older = DataConfig.model_validate({"features": ["amount", "code"], "categorical": ["code"], "label": "y"})
    assert older == mine and older.model_dump()["features"] == {"amount": "auto", "code": "categorical"}
    assert "categorical" not in older.model_dump()  # what a config or a form holds: the one mapping
    assert one_error(features={}).startswith("Dictionary should have at least 1 item")
    assert one_error(features={"x": "category"}) == "Input should be 'auto' or 'categorical'"
    assert one_error(features=["x"], categorical=["y"]).endswith("categorical column 'y' is not among the features ['x']")


def test_the_form_schema_holds_the_feature_rules_the_label_rule_stays_a_backstop() -> None:
    from jsonschema import Draft202012Validator

    schema = DataConfig.model_json_schema()
    assert "categorical" not in schema["properties"]  # a kind of each feature, not a list that could name others
    validator = Draft202012Validator(schema["properties"]["features"]["allOf"][0])  # what the UI validates
    assert [e.message for e in validator.iter_errors({"x": "auto", "y": "category"})] == [
        "'category' is not one of ['auto', 'categorical']"]
    assert list(validator.iter_errors({})) != []
    # JSON Schema cannot compare one value with another: the label among the features fails when the run starts.
    assert one_error(features={"x": "auto", "class": "auto"}).endswith("label 'class' is also listed among the features")


def test_behaviour_cases_default_to_the_circle_only_for_its_features() -> None:
    assert DataConfig().behaviour_cases() == CIRCLE
    assert DataConfig(features=("a", "b"), label="y").behaviour_cases() == ()
    mine = DataConfig.model_validate(
        {"features": ["colour", "size"], "label": "y", "cases": [{"inputs": {"colour": "red", "size": 3}, "expect": 0}]}
    )
    assert mine.behaviour_cases()[0].inputs == {"colour": "red", "size": 3.0}


def test_the_seed_single_layer_and_the_default_two_layers() -> None:
    assert TrainConfig(hidden_units=10).hidden_units == (10,)  # type: ignore[arg-type]
    assert TrainConfig().hidden_units == (64, 32)
    with pytest.raises(ValidationError):
        TrainConfig(hidden_units=(64, 0))
    assert PipelineConfig.model_validate({"train": {"hidden_units": [10]}}).train.hidden_units == (10,)
