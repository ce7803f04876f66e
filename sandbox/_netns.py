"""A worker's own network namespace for a tool with an allowlist: loopback only.

Run in the freshly forked worker, before any tool code: a new network namespace
(so no worker reaches another's loopback), loopback brought up, and a listening
socket on 127.0.0.1 whose descriptor goes to the orchestrator over the worker's
channel. The worker closes its own copy: accepting, parsing and forwarding happen in
the orchestrator (`sandbox.egress.proxy`), where a tool cannot reach them.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from . import _linux

LISTENER_MARK = b"egress-listener"
"""What the worker sends with the descriptor, before it reads its first call."""
BACKLOG = 64
PROXY_HOST = "127.0.0.1"

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sh14x")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = _IFREQ.pack(b"lo", 0)
        _, flags = _IFREQ.unpack(fcntl.ioctl(s, _SIOCGIFFLAGS, request))
        fcntl.ioctl(s, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))


def enter_and_hand_over(channel_fd: int) -> int:
    """Into a new network namespace with loopback up; the listener goes out over
    `channel_fd`. Returns its port. Raises OSError at any step (the worker then fails
    closed before a tool runs)."""
    _linux.unshare(_linux.CLONE_NEWNET)
    interfaces = [name for _, name in socket.if_nameindex()]
    if interfaces != ["lo"]:
        raise OSError(f"the new network namespace has interfaces {interfaces}, not loopback alone")
    _loopback_up()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind((PROXY_HOST, 0))
        listener.listen(BACKLOG)
        port = int(listener.getsockname()[1])
        with socket.socket(fileno=os.dup(channel_fd)) as channel:
            socket.send_fds(channel, [LISTENER_MARK], [listener.fileno()])
    finally:
        listener.close()
    return port


def proxy_environment(port: int) -> dict[str, str]:
    """What the tool's environment says, so urllib, requests, httpx and curl use the
    proxy unchanged (curl reads only the lower-case http_proxy)."""
    url = f"http://{PROXY_HOST}:{port}"
    env = {}
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        env[name] = env[name.upper()] = url
    # Nothing bypasses the proxy, loopback included: a direct connection would reach
    # only the worker's own namespace, and the proxy's refusal says why.
    env["no_proxy"] = env["NO_PROXY"] = ""
    return env
