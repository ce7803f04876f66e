"""The worked example's support-desk tools, backed by a small SQLite file.

Exact business facts (an order's delivery date) live in a relational table behind a
tool; the model gets them from the tool, never from memory.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from . import context
from .registry import tool

DATA_DIR = Path(__file__).resolve().parent / "data"
ORDERS_DB = DATA_DIR / "orders.db"
RETURN_WINDOW_DAYS = 30

SEED_ORDERS = [
    ("12345", "delivered", 89.99, 3, "2025-04-10"),
    ("67890", "delivered", 149.50, 1, "2025-05-01"),
]


def seed_orders_db(path: Path) -> None:
    """(Re)create the example database; `tests/test_support.py` checks the shipped one."""
    path.unlink(missing_ok=True)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE orders (order_id TEXT PRIMARY KEY, status TEXT NOT NULL, "
            "total REAL NOT NULL, items INTEGER NOT NULL, delivered_on TEXT)"
        )
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", SEED_ORDERS)


def _orders_db() -> Path:
    """The `orders_db` setting, a relative one inside the tool's `root` (a policy's own
    shop: its table's root is what the sandbox lets the tool read); else the shipped one."""
    path = Path(context.setting("orders_db", str(ORDERS_DB)))
    root = context.current().root
    return Path(root) / path if root and not path.is_absolute() else path


def _order(order_id: str) -> dict[str, Any]:
    order_id = order_id.strip()
    uri = f"file:{_orders_db()}?mode=ro&immutable=1"
    with closing(sqlite3.connect(uri, uri=True)) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        raise LookupError(f"no order with id {order_id!r}")
    return dict(row)


def today() -> dt.date:
    """The date the tools believe it is: the `today` setting when pinned."""
    pinned = context.setting("today")
    if not pinned:
        return dt.date.today()
    try:
        return dt.date.fromisoformat(str(pinned))
    except ValueError:
        raise ValueError(
            f"the policy's today setting must be a date, YYYY-MM-DD (got {str(pinned)[:40]!r})"
        ) from None


NOT_IN_AN_ORDER = (
    "An order does not hold the shop's rules (returns, refunds, damaged items): they are "
    "in the policy document (read_file). A deadline also needs today's date "
    "(get_current_date). Look up what the answer needs before answering."
)
"""What a lookup does not cover, said in its result: a small model that has the order
otherwise answers a question about the rules from the order alone."""


@tool
def get_order_status(order_id: str) -> dict[str, Any]:
    """Look up one order: its status, total price, number of items and delivery date.

    Use it first for any question about a particular order, and answer from what it
    returns. Not for the shop's rules (returns, refunds): read the policy for those.

    Args:
        order_id: The order number exactly as the customer gave it.
    """
    return {**_order(order_id), "not_in_this_record": NOT_IN_AN_ORDER}


@tool
def get_current_date() -> str:
    """Today's date (YYYY-MM-DD).

    Use it whenever the answer depends on today: a deadline, a return window, how long
    ago something happened. Never assume today's date.
    """
    return today().isoformat()


@tool
def check_return_eligibility(order_id: str) -> str:
    """The last day an order can be returned (its delivery date plus the return
    window), and whether that day has passed.

    Use it for a question about returning an order, together with the order itself
    (get_order_status), the return policy (read_file) and today's date
    (get_current_date), so that the answer can say why. Not for refunds.

    Args:
        order_id: The order number exactly as the customer gave it.
    """
    order = _order(order_id)
    oid = order["order_id"]
    if not order["delivered_on"]:
        return f"No: order {oid} has not been delivered yet (status: {order['status']})"
    window = int(context.setting("return_window_days", RETURN_WINDOW_DAYS))
    delivered = dt.date.fromisoformat(order["delivered_on"])
    last_day = delivered + dt.timedelta(days=window)
    # A verdict first, then why: a small model read "expired on <day>" as the last day
    # still to come, and answered "yes".
    why = f"delivered on {delivered}, {window} days to return it; today is {today()}"
    if today() > last_day:
        verdict = f"No: order {oid} can no longer be returned; its window closed on {last_day}"
        return f"{verdict} ({why})."
    return f"Yes: order {oid} can still be returned, until {last_day} ({why})."


@tool
def issue_refund(order_id: str, amount: float) -> str:
    """Refund money to the customer for an order. A real payment: a person must
    approve it before it runs.

    Use it only when the customer asks for a refund, after looking the order up
    (get_order_status): a full refund is the order's total. Not for questions about
    whether a return or refund is possible.

    Args:
        order_id: The order number exactly as the customer gave it.
        amount: The amount in dollars: the order's total for a full refund, never more.
    """
    order = _order(order_id)
    if not 0 < amount <= order["total"]:
        raise ValueError(f"amount must be above 0 and at most the order's total {order['total']}")
    return f"Refunded {amount:.2f} USD for order {order['order_id']}"
