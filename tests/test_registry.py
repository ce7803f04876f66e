"""@tool: strict OpenAI schemas and argument errors a model can act on."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from sandbox import Pool
from tools import ArgumentError, Registry, ToolDefinitionError
from tools.registry import tool


def make(func) -> Registry:
    registry = Registry()
    registry.add(func)
    return registry


def lookup(city: str, days: int = 3, unit: Literal["C", "F"] = "C") -> str:
    """Weather forecast for a city.

    Args:
        city: City name, e.g. "Paris".
        days: How many days,
            counted from today.
        unit: Temperature unit.

    Returns:
        The forecast.
    """
    return f"{city} {days} {unit}"


def test_the_schema_is_strict_and_documented() -> None:
    spec = make(lookup).get("lookup")
    fn = spec.openai_schema["function"]
    assert fn["strict"] is True
    assert fn["description"] == "Weather forecast for a city."
    params = fn["parameters"]
    assert params["additionalProperties"] is False
    assert params["required"] == ["city", "days", "unit"]
    assert params["properties"]["city"] == {
        "type": "string",
        "description": 'City name, e.g. "Paris".',
    }
    assert params["properties"]["days"]["description"] == "How many days, counted from today."
    assert {"type": "null"} in params["properties"]["days"]["anyOf"]
    assert "default" not in str(params)


class Address(BaseModel):
    street: str
    tags: list[str]


def nested(where: Address, when: dt.date, many: list[int], one: int | None = None) -> str:
    """Types strict mode takes: a model, a date, a typed list, a union with null."""
    return ""


def counts(counts: dict[str, int]) -> str:
    """A free-keyed object."""
    return ""


def anything(anything: Any) -> str:
    """Any value."""
    return ""


def items(items: list) -> str:  # type: ignore[type-arg]
    """A list of anything."""
    return ""


@pytest.mark.parametrize("func", [counts, anything, items])
def test_a_type_strict_mode_refuses_makes_its_tool_not_strict(func: Any) -> None:
    # Sent as "strict": true, OpenAI refuses the whole request (HTTP 400), every run.
    assert make(nested).get("nested").openai_schema["function"]["strict"] is True
    spec = make(func).get(func.__name__)
    assert spec.openai_schema["function"]["strict"] is False
    assert spec.parameters["required"] == [func.__name__]  # the same schema otherwise


def test_valid_arguments_pass_and_null_means_the_default() -> None:
    spec = make(lookup).get("lookup")
    assert spec.validate('{"city": "Paris", "days": null, "unit": null}') == {
        "city": "Paris",
        "days": 3,
        "unit": "C",
    }
    assert spec.validate({"city": "Oslo", "days": 5, "unit": "F"})["days"] == 5


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ('{"city": "Paris", "days": "many"}', "days: expected a whole number, got a string"),
        ('{"days": 2}', "city: Field required"),
        ('{"city": "Paris", "unit": "K"}', "unit: Input should be 'C' or 'F'"),
        (
            '{"city": "Paris", "colour": "red"}',
            "colour: unexpected argument (accepted: city, days, unit)",
        ),
        ('{"city": "Paris",', "not valid JSON"),
        ("[1, 2]", "must be a JSON object, got list"),
        ('"Paris"', "must be a JSON object, got str"),
    ],
)
def test_bad_arguments_name_the_field_and_what_was_expected(arguments: str, message: str) -> None:
    with pytest.raises(ArgumentError, match=r"invalid arguments|JSON") as info:
        make(lookup).get("lookup").validate(arguments)
    assert message in str(info.value)


def test_deeply_nested_json_is_an_argument_error() -> None:
    with pytest.raises(ArgumentError):
        make(lookup).get("lookup").validate("[" * 100_000)


def test_unknown_tools_raise_lookup_error() -> None:
    with pytest.raises(LookupError):
        Registry().get("nope")


def test_definitions_that_cannot_be_tools_fail_at_import() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    def star(*args: int) -> int:
        return 0

    with pytest.raises(ToolDefinitionError, match="needs a type hint"):
        tool(untyped)
    with pytest.raises(ToolDefinitionError, match="plain named parameter"):
        tool(star)
    with pytest.raises(ToolDefinitionError, match="not allowed"):
        tool(name="has space")(lookup)
    with pytest.raises(ToolDefinitionError, match="not allowed"):
        tool(name="lookup\n")(lookup)  # a regex's `$` matches before a last newline


def test_two_tools_with_one_name_are_refused() -> None:
    registry = make(lookup)

    def other(city: str) -> str:
        return city

    with pytest.raises(ToolDefinitionError, match="defined twice"):
        registry.add(other, "lookup")


def when(day: dt.date) -> str:
    """Weekday of a date.

    Args:
        day: ISO date.
    """
    return day.strftime("%A")


def test_non_json_types_are_validated_again_in_the_worker(tmp_path: Path) -> None:
    source = tmp_path / "dated.py"
    source.write_text(
        "import datetime as dt\nfrom tools import tool\n\n"
        "@tool\ndef weekday(day: dt.date) -> str:\n    return day.strftime('%A')\n"
    )
    registry = Registry.default()
    assert registry.load(str(source)) == ["weekday"]
    assert not registry.get("weekday").json_native
    with Pool(registry=registry, size=1) as pool:
        assert pool.call("weekday", {"day": "2025-05-11"}).output == "Sunday"
        bad = pool.call("weekday", {"day": "someday"})
    assert bad.error.kind == "bad_arguments"
    assert "day:" in bad.error.message


def test_loading_a_missing_module_says_what_is_accepted() -> None:
    with pytest.raises(ImportError, match="module name on the Python path or a path"):
        Registry().load("no_such_tools_module")


def test_a_directory_given_as_tools_is_said_to_be_one(tmp_path: Path) -> None:
    # It was "tools file not found: DIR", of a directory that is there.
    with pytest.raises(ImportError, match=r"is a directory; give a \.py file in it, or a module"):
        Registry().load(str(tmp_path))
