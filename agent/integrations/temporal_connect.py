"""How the worker and the client commands reach a Temporal server that is not a dev
server on loopback: TLS (the system's roots, or a CA of your own), mutual TLS with a
client certificate, and an API key (Temporal Cloud) read from an environment variable,
never from the command line, where `ps` would show it.

    sandboxed-agent worker --temporal ns.acct.tmprl.cloud:7233 --namespace ns.acct \\
        --tls --api-key-env TEMPORAL_API_KEY

Flags are checked before anything connects; a bad one is one line, exit 2.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..runner import UsageError


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls", action="store_true", help="connect with TLS (the system's root certificates)"
    )
    p.add_argument("--tls-ca", metavar="FILE", help="trust this CA (PEM) instead; implies --tls")
    p.add_argument(
        "--tls-cert", metavar="FILE", help="client certificate (PEM) for mutual TLS; implies --tls"
    )
    p.add_argument("--tls-key", metavar="FILE", help="the client certificate's key (PEM)")
    p.add_argument(
        "--tls-server-name", metavar="NAME", help="the name the server's certificate must carry"
    )
    p.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="send the API key this environment variable holds (implies --tls)",
    )


def connect_options(args: argparse.Namespace) -> dict[str, Any]:
    """`Client.connect` keywords for the flags given; a UsageError names what is wrong."""
    options: dict[str, Any] = {}
    if args.api_key_env:
        key = os.environ.get(args.api_key_env, "")
        if not key.strip():
            raise UsageError(f"--api-key-env {args.api_key_env}: that variable is not set")
        options["api_key"] = key.strip()
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together (mutual TLS needs both)")
    pems = {flag: _pem(flag, path) for flag, path in _files(args) if path}
    tls = args.tls or bool(pems) or bool(args.tls_server_name) or "api_key" in options
    if tls and (pems or args.tls_server_name):
        from temporalio.service import TLSConfig

        options["tls"] = TLSConfig(
            server_root_ca_cert=pems.get("--tls-ca"),
            client_cert=pems.get("--tls-cert"),
            client_private_key=pems.get("--tls-key"),
            domain=args.tls_server_name,
        )
    elif tls:
        options["tls"] = True
    return options


def tls_hint(options: dict[str, Any]) -> str:
    """Said after a failed connection made with TLS: the usual cause."""
    if "tls" not in options:
        return ""
    return " (with TLS: a dev server speaks none; drop --tls and --api-key-env for one)"


def _files(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    return [("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)]


def _pem(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read it ({exc.strerror})") from None
    if b"-----BEGIN " not in data:
        raise UsageError(f"{flag} {path}: not a PEM file (no -----BEGIN line)")
    return data
