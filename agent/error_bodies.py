"""An error answer's body, bounded before the openai client reads it.

The client reads the whole body of a 4xx or 5xx answer before it raises, with nothing
but the read timeout between two bytes: an endpoint that answers 400 and then sends a
byte a second held the run forever, and one that sent 2 GB grew the process to 7 GB.
A response hook (the HTTP library's own `event_hooks`, so proxies and every transport
are covered) wraps such a body: it ends at `ERROR_BODY_BYTES`, or once the request's
own timeout has passed since the headers came, counted after decompression (a 900 KB
gzip body of zeros is 900 MB; it is decoded here, not by the HTTP library). The run then
gets the status, as the error it is (`failed with HTTP 400`); only its detail may be cut.
"""

from __future__ import annotations

import functools
import importlib
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

ERROR_BODY_BYTES = 1 << 20
"""Most of an error body read: its message is what is shown, and that is short."""


@functools.cache
def _bounded(library: str) -> type:
    """The stream class, on the HTTP library the response is of (httpx2 from openai 3,
    httpx before): each reads only streams of its own `SyncByteStream`."""
    base = importlib.import_module(library).SyncByteStream

    class Bounded(base):  # type: ignore[misc, valid-type]
        """A response's byte stream that ends early; closes the one it wraps."""

        def __init__(self, stream: Any, deadline: float, coding: str, limit: int) -> None:
            self._stream = stream
            self._limit = limit
            self._deadline = deadline
            # gzip or deflate (zlib's header found either way); any other stays as sent
            gzip = coding in ("gzip", "x-gzip", "deflate")
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 32) if gzip else None

        def __iter__(self) -> Iterator[bytes]:
            left = self._limit
            for raw in self._stream:
                try:
                    chunk = self._decoder.decompress(raw, left) if self._decoder else raw
                except zlib.error:
                    return  # not what it said it was: the status is still the error
                yield chunk[:left]
                left -= len(chunk)
                if left <= 0 or time.monotonic() > self._deadline:
                    return

        def close(self) -> None:
            self._stream.close()

    return Bounded


def bound_error_body(response: Any) -> None:
    """A response hook: an error status's body is read within bounds."""
    if response.status_code < 400:
        return  # the answer itself: `agent.model.read_body` bounds it
    _bound(response, ERROR_BODY_BYTES)


def bound_every_body(limit: int) -> Callable[[Any], None]:
    """A response hook for a client whose answers are all short (embeddings, which the
    SDK reads whole: 400 MB of `0.0,` grew the process to 5 GB): every body is read
    within `limit` bytes once decoded, an error's within `ERROR_BODY_BYTES`. A body cut
    short is then not JSON, and the caller's error says so."""

    def hook(response: Any) -> None:
        _bound(response, limit if response.status_code < 400 else min(limit, ERROR_BODY_BYTES))

    return hook


def _bound(response: Any, limit: int) -> None:
    timeout = response.request.extensions.get("timeout") or {}
    read_s = timeout.get("read") or timeout.get("pool") or 60.0
    coding = response.headers.get("content-encoding", "").strip().lower()
    if coding:
        del response.headers["content-encoding"]  # decoded by the stream, within bounds
    stream = _bounded(type(response).__module__.split(".")[0])
    response.stream = stream(response.stream, time.monotonic() + read_s, coding, limit)
