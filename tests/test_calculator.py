"""The calculator attacked: every input answers at once, nothing but arithmetic runs."""

from __future__ import annotations

import pytest

from sandbox import Pool
from tools.calculator import MAX_LENGTH, CalculationError, calculate


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2 + 2", "4"),
        (
            "(89.99 * 3) / 2",
            "134.99 (rounded to 2 decimals; exactly 134.985)",
        ),  # amounts: cents too
        ("89.99 * 2", "179.98"),
        ("7 // 2", "3"),
        ("7 % 4", "3"),
        ("-3 ** 2", "-9"),
        ("2 ** -1", "0.5"),
        ("2 ** 0.5", "1.4142135623731"),
        ("10 ** 100", "1" + "0" * 100),
        ("+-+1", "-1"),
        ("1_000 * 2", "2000"),
        # Dates, in the three forms a deadline takes.
        ("2025-04-10 + 30", "2025-05-10"),
        ("'2025-05-11' - 2025-04-10", "31 days"),
        ("2025-05-11 > 2025-05-10", "true: 2025-05-11 > 2025-05-10"),
    ],
)
def test_arithmetic(expression: str, expected: str) -> None:
    assert calculate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("9**9**9", "exceed"),
        ("10**10**10", "exceed"),
        ("(2**1000)**1000", "exceed"),
        ("3**5000", "exceed"),
        ("(10**1000) * (10**1000)", "exceed"),
        ("2.0 ** 100000", "too large"),
        ("(10**400) / 3.0", "too large"),
        ("1e308 * 10", "finite"),
        ("1 / 0", "division by zero"),
        ("1 // 0", "division by zero"),
        ("1 % 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("(-8) ** 0.5", "no real value"),
        ("(" * 1000 + "1" + ")" * 1000, "too long"),
        ("(" * 100 + "1" + ")" * 100, "nested"),
        ("-" * 900 + "1", "nested"),
        ("1" * 100_000, "too long"),
        ("__import__('os').system('id')", "not allowed"),
        ("x + 1", "not allowed"),
        ("abs(-1)", "not allowed"),
        ("(1).real", "not allowed"),
        ("[1, 2][0]", "not allowed"),
        ("'a' * 3", "only numbers"),
        ("True + 1", "only numbers"),
        ("1j * 1j", "only numbers"),
        ("[x for x in (1,)]", "not allowed"),
        ("lambda: 1", "not allowed"),
        ("1 if 1 else 2", "not allowed"),
        ("1 << 10000", "not allowed"),
        ("1 < 2", "not allowed"),
        ("", "not a valid expression"),
        ("2 +", "not a valid expression"),
        ("1\x002", "NUL"),
        # What a small model sends that is not arithmetic: each refusal says what it is.
        ("24", "nothing to calculate: '24' is a single number"),
        ("-2.5", "single number"),
        ("2025-05-11 - '2025-04-10' + 30", "'2025-05-11' is a date, and with dates .* three"),
        ("May 10 - 3", "'May 10' is a date"),
        ("2025-02-30 + 1", "not a real date"),
        ("$89.99 / 3", "without currency signs"),
        ("get_order_status(order_id='12345')['total'] / 3", "'get_order_status' .* cannot call"),
    ],
)
def test_hostile_or_invalid_input_is_refused_with_a_reason(expression: str, message: str) -> None:
    with pytest.raises(CalculationError, match=message):
        calculate(expression)


def test_the_length_limit_is_exact() -> None:
    expression = "1+" * ((MAX_LENGTH - 1) // 2) + "1"
    assert len(expression) <= MAX_LENGTH
    assert calculate(expression) == str((MAX_LENGTH - 1) // 2 + 1)


def test_it_runs_in_the_sandbox_too(pool: Pool) -> None:
    result = pool.call("calculate", {"expression": "9**9**9"})
    assert result.error.kind == "tool_error"
    assert "CalculationError" in result.error.message
