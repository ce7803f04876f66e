"""`sandboxed-agent doctor`: which isolation layers this machine gives, and proof.

It starts a pool, prints each layer as the zygote found it (active, or unavailable and
why), then runs a probe tool in a real worker and prints what the worker could do.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import textwrap
import warnings

from sandbox import IsolationWarning, Limits, Pool, ToolResult
from sandbox.layers import unwalled_signals
from sandbox.pool import ACCEPT_IN_POLICY
from sandbox.probe import EGRESS_PROBE_LIST
from tools import Registry

from .terminal import safe


def run_doctor(disable: list[str] | None = None, accept_unwalled_signals: bool = False) -> int:
    """Exit status 1 where tools would not run (no layer walls signals, unaccepted):
    the report is still made, by a pool that accepts it for its own probe alone."""
    registry = Registry()
    registry.load("sandbox.probe")
    with warnings.catch_warnings():
        # This command's own report names every missing layer: no warning above it.
        warnings.simplefilter("ignore", IsolationWarning)
        pool = Pool(
            registry=registry, size=1, spares=1, disable=disable or [], accept_unwalled_signals=True
        )
    with pool:
        layers = pool.layers
        probe = pool.call("sandbox_probe")
        allowlisted = Limits(network=EGRESS_PROBE_LIST)
        egress = pool.call("sandbox_egress_probe", limits=allowlisted)
    user = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    print(
        f"Isolation layers on this machine (Linux {platform.release()}, {user}, "
        f"Python {platform.python_version()}):\n"
    )
    for name, layer in layers.items():
        state = "UNAVAILABLE" if layer.state == "unavailable" else layer.state
        print(f"  {state:<12} {name:<18} {safe(layer.detail)}")
    counts = {state: 0 for state in ("active", "off", "standby")}
    for layer in layers.values():
        counts[layer.state] = counts.get(layer.state, 0) + 1
    print(f"\n{counts['active']} of {len(layers)} layers active", end="")
    aside = [
        f"{counts[s]} {label}"
        for s, label in (("off", "turned off by the policy"), ("standby", "on standby"))
        if counts[s]
    ]
    print(f" ({'; '.join(aside)}). " if aside else ". ", end="")
    print(
        'With isolation = "strict", tools run only when every layer is active, but those '
        "turned off by the policy or on standby.\n"
    )
    refused = None if accept_unwalled_signals else unwalled_signals(layers, ACCEPT_IN_POLICY)
    if refused:
        print(f"Tools will not run here: {safe(refused)}.\n")
    if not probe.ok:
        print(f"The probe worker failed: {probe.error.kind}: {safe(probe.error.message)}")
        return 1
    print("What a worker could do, seen from inside one:\n")
    for key, value in json.loads(probe.output or "{}").items():
        print(f"  {safe(key):<24} {safe(value)}")
    _egress_report(egress)
    sys.stdout.flush()
    return 1 if refused else 0


EGRESS_SCOPE = (
    "What an allowlist covers: TCP through the orchestrator's proxy (HTTP CONNECT, plain "
    "HTTP, SOCKS5), which admits only the listed host:port, resolves names itself and "
    "refuses private, loopback, link-local and metadata answers (see [egress] resolve, "
    "allow_private). UDP (DNS included: the proxy resolves), IPv6, raw and other sockets "
    "are refused by seccomp, not proxied. Not inspected: what is said inside an allowed "
    "connection (TLS; a Host header or SNI that a shared front such as a CDN routes by)."
)


def _egress_report(egress: ToolResult) -> None:
    print("\nNetwork allowlists, seen from inside a worker with one:\n")
    if not egress.ok:
        assert egress.error is not None
        print(f"  unavailable: {egress.error.kind}: {safe(egress.error.message)}")
    else:
        for key, value in json.loads(egress.output or "{}").items():
            print(f"  {safe(key):<34} {safe(value)}")
    print()
    for line in textwrap.wrap(EGRESS_SCOPE, 88):
        print(f"  {line}")
