"""The worked example's tools and the shipped data they read."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from policies import parse_policy
from sandbox import Pool
from tools import context
from tools.context import ToolContext
from tools.support import (
    NOT_IN_AN_ORDER,
    ORDERS_DB,
    SEED_ORDERS,
    check_return_eligibility,
    get_current_date,
    get_order_status,
    seed_orders_db,
)


@pytest.fixture
def pinned():
    context.set_current(ToolContext(settings={"today": "2025-05-11"}))
    yield
    context.set_current(ToolContext())


def test_the_shipped_database_holds_exactly_the_seed(tmp_path: Path) -> None:
    fresh = tmp_path / "orders.db"
    seed_orders_db(fresh)
    rows = []
    for db in (ORDERS_DB, fresh):
        with closing(sqlite3.connect(db)) as conn:
            rows.append(conn.execute("SELECT * FROM orders ORDER BY order_id").fetchall())
    assert rows[0] == rows[1] == sorted(SEED_ORDERS)


def test_order_lookup(pinned: None) -> None:
    order = get_order_status("12345")
    assert order == {
        "order_id": "12345",
        "status": "delivered",
        "total": 89.99,
        "items": 3,
        "delivered_on": "2025-04-10",
        # What it does not hold, in its own words: the rules are in the policy.
        "not_in_this_record": NOT_IN_AN_ORDER,
    }
    assert get_order_status("67890")["total"] == 149.50
    with pytest.raises(LookupError, match="no order with id '99999'"):
        get_order_status("99999")


def test_return_eligibility_on_the_worked_example_day(pinned: None) -> None:
    assert get_current_date() == "2025-05-11"
    # The verdict first, then why (a small model read "expired on" as a day to come).
    assert check_return_eligibility("12345") == (
        "No: order 12345 can no longer be returned; its window closed on 2025-05-10 "
        "(delivered on 2025-04-10, 30 days to return it; today is 2025-05-11)."
    )
    assert check_return_eligibility("67890").startswith(
        "Yes: order 67890 can still be returned, until 2025-05-31"
    )


def test_the_last_day_of_the_window_is_still_eligible() -> None:
    context.set_current(ToolContext(settings={"today": "2025-05-10"}))
    try:
        assert check_return_eligibility("12345").startswith("Yes: order 12345 can still be")
    finally:
        context.set_current(ToolContext())


def test_a_today_setting_that_is_no_date_names_the_setting_and_its_form() -> None:
    context.set_current(ToolContext(settings={"today": "tomorrow"}))
    try:
        with pytest.raises(ValueError, match=r"today setting must be a date, YYYY-MM-DD \(got"):
            get_current_date()
    finally:
        context.set_current(ToolContext())


def test_policy_text_ships_in_the_document_root() -> None:
    text = (Path(ORDERS_DB).parent / "docs" / "policy.txt").read_text()
    assert text.strip() == "Returns accepted within 30 days of delivery."


def test_the_date_is_pinned_through_the_policy_in_the_sandbox(pool: Pool, tmp_path: Path) -> None:
    policy = parse_policy('[defaults.settings]\ntoday = "2025-05-11"\n', "t.toml", tmp_path)
    with Pool(policy, registry=pool.registry, size=1) as p:
        assert p.call("get_current_date").output == "2025-05-11"
        result = p.call("check_return_eligibility", {"order_id": "67890"})
        assert result.output.startswith("Yes: order 67890 can still be returned, until 2025-05-31")
        missing = p.call("get_order_status", {"order_id": "99999"})
        assert missing.error.kind == "tool_error"
        assert "no order with id" in missing.error.message
