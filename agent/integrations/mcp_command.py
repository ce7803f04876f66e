"""`sandboxed-agent mcp serve`: its flags, checked before anything starts, and the run.

    sandboxed-agent mcp serve [--tools FILE_OR_MODULE]... [--policy FILE] [--isolation strict]
                              [--http [HOST:]PORT] [--token-env VAR] [--workers N]
                              [--approve TOOL]... [--yes] [--ask] [--offer TOOL]... [--trace FILE]
                              [--progress-every S]

Imports no part of the `mcp` SDK itself (`cmd_mcp` does, once it runs), so the other
commands work without the extra installed.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from ..cli_types import positive_int, say, seconds_between
from ..runner import UsageError, check_approve

TOKEN_ENV = "SANDBOXED_AGENT_MCP_TOKEN"
MIN_TOKEN_CHARS = 16


def add_mcp_parser(sub: Any, tool_sources: Callable[[argparse.ArgumentParser], None]) -> None:
    mcp = sub.add_parser("mcp", help="offer the sandboxed tools to MCP clients")
    commands = mcp.add_subparsers(
        dest="mcp_command", metavar="serve", required=True, parser_class=type(mcp)
    )
    serve = commands.add_parser(
        "serve", help="serve the tools over MCP: stdio, or Streamable HTTP with --http"
    )
    tool_sources(serve)
    serve.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        help="serve Streamable HTTP at http://HOST:PORT/mcp instead of stdio "
        "(HOST defaults to 127.0.0.1; port 0 picks a free one)",
    )
    serve.add_argument(
        "--token-env",
        metavar="VAR",
        help=f"the environment variable holding the bearer token (default: {TOKEN_ENV}); "
        "required for an address other than loopback",
    )
    serve.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="at most N tool calls run at once (default: the CPU count)",
    )
    serve.add_argument(
        "--approve",
        action="append",
        default=[],
        metavar="TOOL",
        help="allow this tool if it needs approval (repeatable); others are denied",
    )
    serve.add_argument("--yes", action="store_true", help="allow every tool that needs approval")
    serve.add_argument(
        "--ask",
        action="store_true",
        help="ask the person at the client (MCP elicitation) about a call that needs "
        "approval and no flag allows; clients that cannot be asked are denied",
    )
    serve.add_argument(
        "--offer",
        action="append",
        metavar="TOOL",
        help="serve only these tools (repeatable; default: the policy's [run] offer, else all)",
    )
    serve.add_argument("--trace", metavar="FILE", help="append every call to this JSON Lines file")
    serve.add_argument(
        "--progress-every",
        type=seconds_between(0.05, 3600),
        default=1.0,
        metavar="SECONDS",
        help="how often a running call reports progress to a client that asked (default: 1)",
    )


def parse_address(text: str) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[IPV6]:PORT` as (host, port); HOST defaults to loopback."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise UsageError(f"--http {text}: write an IPv6 address in brackets, like [::1]:8000")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise UsageError(
            f"--http {text}: {port_text!r} is not a port (0-65535); give PORT or HOST:PORT, "
            "like 127.0.0.1:8000"
        )
    return host or "127.0.0.1", port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer_token(args: argparse.Namespace, host: str) -> str | None:
    """The token clients must send, or None (loopback only, and none was set)."""
    variable = args.token_env or TOKEN_ENV
    token = os.environ.get(variable, "")
    if token and len(token) < MIN_TOKEN_CHARS:
        raise UsageError(
            f"{variable} holds a token of {len(token)} characters; use at least "
            f"{MIN_TOKEN_CHARS} (for example: openssl rand -hex 32)"
        )
    if not token and args.token_env:
        raise UsageError(f"--token-env {variable}: that variable is not set or is empty")
    if not token and not is_loopback(host):
        raise UsageError(
            f"--http {host}: serving beyond loopback needs a bearer token; put one in "
            f"{variable} (clients send Authorization: Bearer <token>), or bind 127.0.0.1"
        )
    return token or None


def cmd_mcp(args: argparse.Namespace) -> int:
    from ..audit import Trace
    from ..cli import load_setup

    if args.token_env and not args.http:
        raise UsageError("--token-env applies only with --http (stdio needs no token)")
    address = parse_address(args.http) if args.http else None
    token = bearer_token(args, address[0]) if address else None
    try:
        from . import mcp_transport
    except ImportError as exc:
        raise UsageError(
            f"mcp serve needs the MCP SDK ({exc}); install it with: pip install "
            "'sandboxed-agent[mcp]'"
        ) from None
    with ExitStack() as stack:
        try:
            trace = Trace(args.trace, secrets=[token or ""])
        except OSError as exc:
            raise UsageError(
                f"--trace {args.trace}: cannot write there ({exc.strerror or exc}); give a "
                "file in an existing, writable directory"
            ) from None
        stack.callback(trace.close)
        sock = wire = None
        if address is None:
            # Before the tools are imported: a module that prints as it loads must not
            # write into the protocol.
            wire = mcp_transport.claim_stdio()
            stack.callback(mcp_transport.release_stdio, wire)
        else:
            try:
                sock = mcp_transport.bind_socket(*address)
            except OSError as exc:
                raise UsageError(
                    f"--http {args.http}: cannot listen there ({exc.strerror or exc})"
                ) from None
            stack.callback(sock.close)
        registry, policy = load_setup(args.tools, args.policy, args.isolation)
        check_approve(args.approve, registry.names())
        check_approve(args.offer or [], registry.names(), "--offer")
        return _serve(stack, args, registry, policy, trace, wire, sock, token)


def _serve(
    stack: ExitStack,
    args: argparse.Namespace,
    registry: Any,
    policy: Any,
    trace: Any,
    wire: Any,
    sock: Any,
    token: str | None,
) -> int:
    import anyio

    from sandbox import Pool

    from ..approval import Approver
    from .mcp_serve import ServeEnded, ServeStarted, ToolService, build_server
    from .mcp_transport import serve_http, serve_stdio

    pool = stack.enter_context(
        Pool(policy, registry=registry, size=args.workers, **policy.pool_options())
    )
    approver = Approver(set(args.approve), args.yes)  # never interactive: nobody to ask
    offer = args.offer or policy.run.offer
    service = ToolService(
        pool,
        policy,
        approver,
        trace,
        progress_every_s=args.progress_every,
        offer=offer,
        ask_client=args.ask,
    )
    server = build_server(service)
    transport = "stdio" if sock is None else "http"
    trace.emit(
        ServeStarted(
            transport=transport,
            policy=policy.source,
            tools=service.names(),
            workers=pool.size,
        )
    )
    count = len(service.names())

    def announce(where: str) -> None:
        say(f"serving {count} tools over MCP at {where} (at most {pool.size} calls at once)")

    if sock is None:
        say(f"serving {count} tools over MCP on stdio (at most {pool.size} calls at once)")
        reason = anyio.run(serve_stdio, server, wire)
    else:
        reason = anyio.run(serve_http, server, sock, token, announce)
    pool.close()  # every worker killed and reaped before the line below
    trace.emit(ServeEnded(reason=reason, calls=service.calls))
    calls = "1 call" if service.calls == 1 else f"{service.calls} calls"
    say(f"stopped ({reason}) after {calls}; no worker left")
    return 0
