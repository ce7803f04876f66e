"""Approval over MCP: the person at the client is asked through elicitation.

`mcp serve --ask` sends a form-mode `elicitation/create` to the client that made the
call: the tool, its exact bound arguments (escaped, one key per line, with their hash)
and one yes/no field. Only an `accept` whose `allow` is the boolean `true` runs the
call, and what runs is the object shown: the answer belongs to this request, and the
call's arguments were bound before the question was asked. Anything else (decline,
cancel, a client that cannot be asked, an error, no answer in `ASK_TIMEOUT_S`) denies.

Two generations of the protocol ask differently. A connection that can carry a request
from the server (stdio, and HTTP of the handshake era) gets `elicitation/create` while
the call waits. A 2026-era request that cannot (stateless HTTP) gets an
`InputRequiredResult` instead: the question, and a `request_state` that names the
arguments' hash, a nonce and an expiry under this process's HMAC; the client asks its
person and sends the call again with the answer, and that answer counts only for a state
this server minted for the same tool and the same arguments, within `ASK_TIMEOUT_S`, and
once: a yes runs one call, however often (or however many times at once) it is sent.

Off by default: a client that may approve its own calls is as good as `--yes` when the
client is the model's host, so the operator chooses it, per server.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from ..approval import Decision, what_would_run
from ..binding import BoundCall
from ..terminal import ascii_json, safe

ASK_TIMEOUT_S = 600.0
"""How long a person at the client has to answer before the call is denied."""
FIELD = "allow"
QUESTION = "approve"
"""The key of the question in an `InputRequiredResult`."""
SUMMARY_OVER = 600
"""A question longer than this (its arguments listed) starts with a one-line summary."""
SHORT_VALUE_CHARS = 80
_KEY = secrets.token_bytes(32)
"""Seals the `request_state` this process hands out: the client echoes it back."""


def _form(tool: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            FIELD: {
                "type": "boolean",
                "title": f"Run {tool} with exactly these arguments",
                "default": False,
            }
        },
        "required": [FIELD],
    }


def _message(call: BoundCall) -> str:
    shown = what_would_run(call, "The MCP client")
    if len(shown) > SUMMARY_OVER:
        shown = f"{_summary(call)}\n{shown}"
    return f"sandboxed-agent: {shown}\nAllow this call?"


def _summary(call: BoundCall) -> str:
    """Every argument on one line, a long one by its size: a client's dialog shows the
    top of the question, and a long value (sorted first) would push a short one that
    matters (a recipient, an amount) out of view."""
    parts = []
    for key in sorted(call.args):
        value = ascii_json(call.args[key])
        if len(value) > SHORT_VALUE_CHARS:
            value = f"({len(value):,} characters, in full below)"
        parts.append(f"{safe(key)} = {value}")
    return f"In short, {safe(call.tool)} with " + ", ".join(parts) + ". In full:"


def _verdict(call: BoundCall, answer: Any) -> Decision:
    allowed = (
        isinstance(answer, types.ElicitResult)
        and answer.action == "accept"
        and (answer.content or {}).get(FIELD) is True
    )
    return Decision(allowed, "approved_client" if allowed else "denied_client", call.sha256)


def _mac(call: BoundCall, nonce: str, expires: str) -> str:
    text = f"{call.tool}\0{call.sha256}\0{nonce}\0{expires}"
    return hmac.new(_KEY, text.encode(), hashlib.sha256).hexdigest()


def _seal(call: BoundCall, timeout_s: float) -> str:
    nonce = secrets.token_hex(16)
    expires = f"{time.monotonic() + timeout_s:.3f}"
    return f"{call.sha256}.{nonce}.{expires}.{_mac(call, nonce, expires)}"


def _opened(state: str, call: BoundCall) -> tuple[str, float] | None:
    """The nonce and expiry of a state minted here for exactly `call`; None: any other."""
    parts = state.split(".", 1)
    if len(parts) != 2 or parts[0] != call.sha256:
        return None
    nonce, _, rest = parts[1].partition(".")
    expires, _, mac = rest.rpartition(".")
    if not hmac.compare_digest(mac.encode(), _mac(call, nonce, expires).encode()):
        return None
    return nonce, float(expires)


class _Spent:
    """The nonces of states whose yes has run its call, kept until they expire (an
    expired state is refused anyway): a replayed or raced yes finds its nonce here."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def spend(self, nonce: str, expires: float) -> bool:
        """True the first time `nonce` is spent."""
        now = time.monotonic()
        with self._lock:
            for old in [n for n, t in self._until.items() if t < now]:
                del self._until[old]
            if nonce in self._until:
                return False
            self._until[nonce] = expires
            return True


_SPENT = _Spent()


def asks_by_result(ctx: ServerRequestContext[Any]) -> bool:
    """A 2026-era request on a channel that cannot carry the server's own request."""
    return not ctx.session.can_send_request


def question(call: BoundCall, timeout_s: float = ASK_TIMEOUT_S) -> types.InputRequiredResult:
    """The question for a client that asks and sends the call again (2026 era); its
    answer counts for `timeout_s`."""
    params = types.ElicitRequestFormParams(
        message=_message(call), requested_schema=_form(call.tool)
    )
    return types.InputRequiredResult(
        input_requests={QUESTION: types.ElicitRequest(params=params)},
        request_state=_seal(call, timeout_s),
    )


def answer_carried(params: types.CallToolRequestParams, call: BoundCall) -> Decision | None:
    """The decision a retried call carries; None: it carries no answer (ask it)."""
    if params.input_responses is None and params.request_state is None:
        return None
    opened = _opened(params.request_state or "", call)
    if opened is None:
        # Not a state minted for these arguments: changed since the question, or forged.
        return Decision(False, "denied_client_changed", call.sha256)
    nonce, expires = opened
    if time.monotonic() > expires:
        return Decision(False, "denied_client_timeout", call.sha256)
    decision = _verdict(call, (params.input_responses or {}).get(QUESTION))
    if decision.allowed and not _SPENT.spend(nonce, expires):
        return Decision(False, "denied_client_replayed", call.sha256)
    return decision


async def ask_client(
    ctx: ServerRequestContext[Any], call: BoundCall, timeout_s: float = ASK_TIMEOUT_S
) -> Decision:
    """The client's person's yes or no for `call`; a denial when they cannot be asked."""
    wanted = types.ClientCapabilities(elicitation=types.ElicitationCapability())
    if not ctx.session.check_client_capability(wanted):
        return Decision(False, "denied_client_unable", call.sha256)
    try:
        with anyio.fail_after(timeout_s):
            answer = await ctx.session.elicit_form(
                _message(call), _form(call.tool), related_request_id=ctx.request_id
            )
    except TimeoutError:
        return Decision(False, "denied_client_timeout", call.sha256)
    except (MCPError, ValidationError):  # no back channel, the client refused to ask
        return Decision(False, "denied_client_unable", call.sha256)
    return _verdict(call, answer)
