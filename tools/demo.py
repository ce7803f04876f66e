"""A tool for the demo only: a carrier API that never answers.

`sandboxed-agent demo` loads it to show a hung tool being killed on time, with the
process it started.
"""

from __future__ import annotations

import subprocess
import time

from .registry import tool


@tool
def track_shipment(order_id: str) -> str:
    """Ask the carrier where a shipment is (the demo's carrier never answers).

    Args:
        order_id: The order number, e.g. "12345".
    """
    # A helper process that would outlive a thread-based timeout.
    subprocess.Popen(["sleep", "3600"], start_new_session=True)
    while True:
        time.sleep(60)
