"""`calculate`: arithmetic on an AST allowlist, bounded so that every input is cheap.

Python's own integers are unbounded, so `9**9**9` would run for minutes and
`(2**1000)**1000` would eat memory. Every operation here checks the size its result
would have before computing it; the expression's length and nesting are capped
before `ast.parse`, whose recursion a thousand parentheses could otherwise exhaust.
"""

from __future__ import annotations

import ast
import datetime as dt
import math
import operator
import re
from decimal import ROUND_HALF_UP, Decimal

from .registry import tool

MAX_LENGTH = 1000
MAX_NESTING = 64
"""Parentheses; checked on the text, before the parser recurses into them."""
MAX_DEPTH = 600
"""Depth of the syntax tree: a 1,000-character `1+1+...` chain is ~500 deep, and the
evaluator recurses once per level (Python's own limit is 1,000)."""
MAX_INT_BITS = 4096
"""About 1,233 decimal digits: far past any real calculation, far below a slow one."""

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}

ACCEPTED = (
    "calculate takes one arithmetic expression: numbers with + - * / // % ** and "
    "parentheses, written with the numbers themselves"
)
"""Said after every refusal: what was wrong, then what is accepted. No example values:
a small model copied the old description's example into its answers."""

_DATE = re.compile(
    r"\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b|"
    r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.? \d{1,2}\b",
    re.IGNORECASE,
)
_MONEY = re.compile(r"[$€£¥]|\d,\d{3}\b")


class CalculationError(ValueError):
    """The expression is not allowed or has no finite answer."""


def _refused(why: str) -> CalculationError:
    """A refusal of what the model wrote (not of a result too large): why, and what is
    accepted, so that a small model can write the call again right."""
    return CalculationError(f"{why}. {ACCEPTED}.")


_ISO = r"['\"]?(\d{4}-\d{2}-\d{2})['\"]?"
_DATE_PLUS = re.compile(rf"\s*{_ISO}\s*([+-])\s*(\d{{1,5}})\s*(?:days?)?\s*")
_DATE_DIFF = re.compile(rf"\s*{_ISO}\s*-\s*{_ISO}\s*")
_DATE_CMP = re.compile(rf"\s*{_ISO}\s*(<=|>=|==|<|>)\s*{_ISO}\s*")
DATE_FORMS = (
    "with dates (YYYY-MM-DD) it takes three forms only: a date plus or minus a number "
    "of days, one date minus another (the days between them), or two dates compared "
    "with < <= > >= =="
)


def date_arithmetic(expression: str) -> str | None:
    """The three date forms a small model writes for a deadline, computed; None for
    an expression without a date. A date in any other form is refused."""
    plus, diff, cmp = (r.fullmatch(expression) for r in (_DATE_PLUS, _DATE_DIFF, _DATE_CMP))
    try:
        if plus:
            day, sign, n = _day(plus.group(1)), plus.group(2), int(plus.group(3))
            moved = day + dt.timedelta(days=n if sign == "+" else -n)
            return moved.isoformat()
        if diff:
            days = (_day(diff.group(1)) - _day(diff.group(2))).days
            return f"{days} days"
        if cmp:
            left, op, right = _day(cmp.group(1)), cmp.group(2), _day(cmp.group(3))
            holds = _COMPARE[op](left, right)
            return f"{str(holds).lower()}: {left} {op} {right}"
    except OverflowError:
        raise _refused("that date is out of range") from None
    date = _DATE.search(expression)
    if date:
        raise _refused(f"{date.group(0)!r} is a date, and {DATE_FORMS}")
    return None


_COMPARE = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
}


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise _refused(f"{text!r} is not a real date (YYYY-MM-DD)") from None


def _check_meaning(expression: str) -> None:
    """What small models send that is not arithmetic, refused with what it is: money
    signs and separators."""
    if _MONEY.search(expression):
        raise _refused("write numbers without currency signs or thousands separators")


def _check_nesting(expression: str) -> None:
    depth = 0
    for ch in expression:
        if ch == "(":
            depth += 1
            if depth > MAX_NESTING:
                raise CalculationError(f"too deeply nested: at most {MAX_NESTING} parentheses")
        elif ch == ")":
            depth -= 1


def _bits(value: int | float) -> int:
    return value.bit_length() if isinstance(value, int) else 0


def _too_big(what: str) -> CalculationError:
    return CalculationError(
        f"{what} would exceed {MAX_INT_BITS} bits; numbers this large are refused"
    )


def _power(base: int | float, exp: int | float) -> int | float:
    # The result has at least (bit_length - 1) * exp bits: refuse before computing.
    # Whatever passes is at most twice the cap, cheap to compute and check after.
    big_int_power = isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1
    if big_int_power and (exp > MAX_INT_BITS or (base.bit_length() - 1) * exp > MAX_INT_BITS):
        raise _too_big("the power")
    if base == 0 and exp < 0:
        raise CalculationError("division by zero")
    if isinstance(base, float) or isinstance(exp, float) or exp < 0:
        try:
            return math.pow(base, exp)
        except OverflowError:
            raise CalculationError("the power is too large to represent") from None
        except ValueError:
            raise CalculationError("the power has no real value") from None
    return base**exp


def _apply(op: ast.operator, left: int | float, right: int | float) -> int | float:
    if isinstance(op, ast.Pow):
        result = _power(left, right)
    elif isinstance(op, ast.Mult) and _bits(left) + _bits(right) > MAX_INT_BITS + 1:
        raise _too_big("the product")
    else:
        try:
            result = _BINARY[type(op)](left, right)
        except ZeroDivisionError:
            raise CalculationError("division by zero") from None
        except OverflowError:
            raise CalculationError("the result is too large to represent") from None
    if _bits(result) > MAX_INT_BITS:
        raise _too_big("the result")
    return result


def _eval(node: ast.AST, depth: int = 0) -> int | float:
    if depth > MAX_DEPTH:
        raise CalculationError(f"too deeply nested: at most {MAX_DEPTH} levels")
    if isinstance(node, ast.Expression):
        return _eval(node.body, depth + 1)
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _refused(f"only numbers are allowed, not {type(value).__name__}")
        if _bits(value) > MAX_INT_BITS:
            raise _too_big("the number")
        return value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _eval(node.left, depth + 1)
        right = _eval(node.right, depth + 1)
        return _apply(node.op, left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, depth + 1))
    if isinstance(node, ast.Name):
        raise _refused(
            f"{node.id!r} is a name, and names are not allowed: calculate cannot read "
            "variables or call tools. Call a tool on its own, then write the numbers it "
            "returned into the expression"
        )
    if isinstance(node, ast.Call | ast.Attribute | ast.Subscript):
        names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]
        what = f"{names[0]!r} (a {type(node).__name__})" if names else type(node).__name__
        raise _refused(
            f"{what} is not allowed: calculate cannot call functions or "
            "tools, nor read their results. Call a tool on its own, then write the "
            "numbers it returned into the expression"
        )
    raise _refused(f"{type(node).__name__} is not allowed")


def evaluate(expression: str) -> int | float:
    """Evaluate safely; raises `CalculationError` with what was wrong."""
    if not isinstance(expression, str):
        raise CalculationError("the expression must be a string")
    if len(expression) > MAX_LENGTH:
        raise CalculationError(
            f"expression too long: {len(expression)} characters, at most {MAX_LENGTH}"
        )
    if "\x00" in expression:
        raise CalculationError("the expression contains a NUL character")
    _check_nesting(expression)
    _check_meaning(expression)
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        msg = getattr(exc, "msg", None) or str(exc)
        hint = ""
        if "%" in expression:
            hint = " (a percentage is a fraction: multiply by the percent, then / 100)"
        elif "=" in expression:
            hint = " (one expression, not an assignment or a comparison)"
        raise _refused(f"not a valid expression: {msg}{hint}") from None
    if isinstance(tree.body, ast.Constant) or (
        isinstance(tree.body, ast.UnaryOp) and isinstance(tree.body.operand, ast.Constant)
    ):
        raise _refused(
            f"nothing to calculate: {expression.strip()!r} is a single number. Use "
            "calculate to make a new number from numbers you have; a number you already "
            "have needs no tool"
        )
    result = _eval(tree)
    if isinstance(result, float) and not math.isfinite(result):
        raise CalculationError("the result is not a finite number")
    return result


def format_number(value: int | float) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".15g")
    return str(value)


@tool
def calculate(expression: str) -> str:
    """Compute arithmetic exactly: one expression of numbers with + - * / // % **
    and parentheses.

    Use it when the answer needs a number that no tool gave you (a sum, a split, a
    price per item, a percentage), rather than working it out yourself, written with
    the numbers from the question or from tool results. Not for a number you already
    have, and not to look anything up: it cannot call tools or read names, only
    numbers. With dates (YYYY-MM-DD), only a date plus or minus a number of days, one
    date minus another, or two dates compared.

    Args:
        expression: The arithmetic, written with the numbers themselves.
    """
    if isinstance(expression, str) and len(expression) <= MAX_LENGTH:
        dated = date_arithmetic(expression)
        if dated is not None:
            return dated
    result = evaluate(expression)
    said = format_number(result)
    exact = Decimal(said)
    if _cents(expression) and abs(result) < 1e15 and exact.as_tuple().exponent < -2:  # type: ignore[operator]
        # Amounts in, an amount out, first: a small model cut 29.9966... to 29.99, and
        # did so again when the rounded amount came after it.
        cents = exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        said = f"{cents} (rounded to 2 decimals; exactly {said})"
    return said


def _cents(expression: str) -> bool:
    """Every decimal number in it has at most two decimals, and one has two: money."""
    decimals = [len(d) for d in re.findall(r"\d\.(\d+)", expression)]
    return 2 in decimals and max(decimals) == 2
