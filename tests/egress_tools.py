"""Tools for the egress tests: well-behaved clients (urllib, httpx, a CONNECT tunnel,
SOCKS5) and hostile ones (raw bytes to the proxy, direct connects, cleared proxy
variables, a tool that holds its connection)."""

from __future__ import annotations

import http.client
import os
import socket
import struct
import time
import urllib.request

import httpx

from tools import tool


def _proxy() -> tuple[str, int]:
    url = os.environ["HTTPS_PROXY"]
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@tool
def egress_urllib(url: str) -> str:
    """GET a URL with urllib (proxies from the environment).

    Args:
        url: The URL.
    """
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


@tool
def egress_httpx(url: str) -> str:
    """GET a URL with httpx (proxies from the environment).

    Args:
        url: The URL.
    """
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return response.text


@tool
def egress_tunnel(host: str, port: int) -> str:
    """GET / through a CONNECT tunnel, as urllib does for https.

    Args:
        host: Destination host.
        port: Destination port.
    """
    conn = http.client.HTTPConnection(*_proxy(), timeout=10)
    conn.set_tunnel(host, port)
    conn.request("GET", "/tunnel")
    return conn.getresponse().read().decode()


@tool
def egress_socks(host: str, port: int, kind: int = 3, command: int = 1) -> str:
    """GET / through SOCKS5 (kind 3: by name, 1: IPv4, 4: IPv6; command 1: CONNECT).

    Args:
        host: Destination host.
        port: Destination port.
        kind: SOCKS5 address type.
        command: SOCKS5 command (2: BIND, 3: UDP ASSOCIATE).
    """
    with socket.create_connection(_proxy(), timeout=10) as s:
        s.sendall(b"\x05\x01\x00")
        if s.recv(2) != b"\x05\x00":
            return "no method"
        if kind == 3:
            address = bytes([len(host)]) + host.encode()
        else:
            family = socket.AF_INET if kind == 1 else socket.AF_INET6
            address = socket.inet_pton(family, host)
        s.sendall(bytes([5, command, 0, kind]) + address + struct.pack("!H", port))
        reply = s.recv(10)
        if len(reply) < 2 or reply[1] != 0:
            return f"refused: SOCKS5 reply {reply[1] if len(reply) > 1 else None}"
        s.sendall(f"GET /socks HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data.decode().split("\r\n\r\n", 1)[-1]


@tool
def egress_raw(data: str, pause: bool = False) -> str:
    """Send bytes to the proxy as they are; the first line of its answer (or how the
    connection ended).

    Args:
        data: What to send.
        pause: Then wait for the proxy without sending the rest (a slow client).
    """
    host, port = _proxy()
    data = data.replace("{proxy_port}", str(port))
    with socket.create_connection((host, port), timeout=30) as s:
        try:
            s.sendall(data.encode("latin-1"))
        except OSError as exc:
            return f"send failed: {exc}"
        answer = s.recv(4096)
    if not answer:
        return "closed without an answer"
    return answer.decode("latin-1").split("\r\n", 1)[0]


@tool
def egress_direct(host: str, port: int) -> str:
    """Connect straight to an address, as if there were no proxy.

    Args:
        host: Address.
        port: Port.
    """
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        return f"denied: {type(exc).__name__}: {exc}"
    return "ALLOWED"


@tool
def egress_unproxied(url: str) -> str:
    """Clear every proxy variable, then GET a URL with urllib.

    Args:
        url: The URL.
    """
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            del os.environ[name]
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return "ALLOWED: " + response.read().decode()
    except OSError as exc:
        return f"denied: {type(exc).__name__}: {exc}"


@tool
def egress_socket(family: int, kind: int) -> str:
    """Make a socket of a family and type.

    Args:
        family: Address family.
        kind: Socket type.
    """
    try:
        socket.socket(family, kind).close()
    except OSError as exc:
        return f"denied: {exc}"
    return "ALLOWED"


@tool
def egress_many(host: str, port: int, count: int) -> str:
    """Open `count` tunnels at once; how each answered.

    Args:
        host: Destination host.
        port: Destination port.
        count: How many.
    """
    answers, held = [], []
    for _ in range(count):
        try:
            s = socket.create_connection(_proxy(), timeout=10)
            held.append(s)
            s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\n\r\n".encode())
            answer = s.recv(4096).split(b"\r\n", 1)[0].decode() or "closed"
        except ConnectionError:
            answer = "closed"
        answers.append(answer)
    for s in held:
        s.close()
    return "\n".join(answers)


@tool
def egress_hold(host: str, port: int) -> str:
    """Open a tunnel, send a line, then hang with it open.

    Args:
        host: Destination host.
        port: Destination port.
    """
    s = socket.create_connection(_proxy(), timeout=10)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\n\r\n".encode())
    s.recv(4096)
    s.sendall(b"hello\n")
    time.sleep(3600)
    return "never"


@tool
def egress_curl(url: str) -> str:
    """GET a URL with curl (proxies from the environment); its exit status and output.

    Args:
        url: The URL.
    """
    import subprocess

    proc = subprocess.run(
        ["curl", "-sS", "--max-time", "10", url], capture_output=True, text=True, timeout=20
    )
    return f"{proc.returncode} {proc.stdout}{proc.stderr}".strip()


@tool
def egress_requests(url: str) -> str:
    """GET a URL with requests (proxies from the environment).

    Args:
        url: The URL.
    """
    import requests

    response = requests.get(url, timeout=10)
    response.raise_for_status()
    return response.text
