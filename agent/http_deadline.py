"""Every read and write of a model request ends by the run's deadline.

The HTTP library's timeouts bound each read (and each write) alone: an endpoint that
sends its status line or its headers a byte a second, or reads the request a byte a
second, keeps every read short and the request going forever, whatever `--max-wall-s`
says. Here the connection pool's network backend (the HTTP core library's own
extension point) is wrapped: each connect, read and write gets at most what is left
until the deadline `until` set for the calling thread, and none starts after it; the
library then raises its own timeout, which the openai client reports as one.

    with until(time.monotonic() + 30):
        client.chat.completions.create(...)
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_deadline: ContextVar[float | None] = ContextVar("model_request_deadline", default=None)

WRITE_CHUNK = 1 << 16
"""A write is sent in pieces of this size, the deadline checked before each: one write
of a long conversation to an endpoint that reads slowly would otherwise never end."""


@contextmanager
def until(deadline: float) -> Iterator[None]:
    """Model requests made by this thread inside the block end by `deadline`
    (`time.monotonic()`)."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def bound_by_deadlines(http_client: Any) -> int:
    """Wrap the network backend of each connection pool `http_client` (an httpx2 or
    httpx `Client`) holds, proxies' included; how many were wrapped. Pools are reached
    through the libraries' private attributes, the one way to give them a backend:
    where they are gone, nothing is wrapped and the tests say so."""
    transports = [getattr(http_client, "_transport", None)]
    transports += list(getattr(http_client, "_mounts", {}).values())
    wrapped = 0
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is None or isinstance(backend, _Bounded):
            continue
        pool._network_backend = _Bounded(backend)  # type: ignore[union-attr]
        wrapped += 1
    return wrapped


def _left(timeout: float | None, error: str, backend: Any) -> float | None:
    """`timeout`, cut to what is left of the deadline; past it, the library's `error`."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        library = importlib.import_module(type(backend).__module__.split(".")[0])
        raise getattr(library, error)("the run's deadline for this model request passed")
    return left if timeout is None else min(timeout, left)


class _Stream:
    """A network stream whose reads and writes end by the deadline."""

    def __init__(self, stream: Any, backend: Any) -> None:
        self._stream = stream
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, "ReadTimeout", self._backend))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        while view:
            piece, view = view[:WRITE_CHUNK], view[WRITE_CHUNK:]
            self._stream.write(bytes(piece), _left(timeout, "WriteTimeout", self._backend))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> _Stream:
        left = _left(timeout, "ConnectTimeout", self._backend)
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, left), self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _Bounded:
    """A network backend whose connections end by the deadline."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def connect_tcp(
        self, host: str, port: int, timeout: float | None = None, **kwargs: Any
    ) -> _Stream:
        left = _left(timeout, "ConnectTimeout", self._backend)
        return _Stream(self._backend.connect_tcp(host, port, left, **kwargs), self._backend)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, **kwargs: Any
    ) -> _Stream:
        left = _left(timeout, "ConnectTimeout", self._backend)
        return _Stream(self._backend.connect_unix_socket(path, left, **kwargs), self._backend)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)
