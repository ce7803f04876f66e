"""Length-prefixed frames over a stream socket, read against a deadline.

The orchestrator never trusts the other end: it waits with `poll` on the socket and
the worker's pidfd together (so a dead worker is noticed at once, not at the
deadline), and refuses a frame longer than the caller allows before reading it.
"""

from __future__ import annotations

import select
import socket
import struct
import time

_HEADER = struct.Struct("!I")


class Deadline(Exception):
    """The deadline passed before a whole frame arrived."""


class PeerGone(Exception):
    """The worker closed its end or exited before a whole frame arrived."""


class Oversized(Exception):
    """The peer announced a frame longer than allowed."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def recv_frame_blocking(sock: socket.socket) -> bytes | None:
    """Worker side: wait as long as it takes; None when the orchestrator is gone."""
    header = _recv_exact_blocking(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    return _recv_exact_blocking(sock, size)


def _recv_exact_blocking(sock: socket.socket, size: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(min(size - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class FrameReader:
    """Orchestrator side: one frame from a worker, or an exception saying why not."""

    def __init__(self, sock: socket.socket, pidfd: int) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._pidfd = pidfd
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._poll.register(pidfd, select.POLLIN)

    def read(self, deadline: float, max_size: int) -> bytes:
        header = self._read_exact(_HEADER.size, deadline)
        (size,) = _HEADER.unpack(header)
        if size > max_size:
            raise Oversized(size)
        return self._read_exact(size, deadline)

    def _read_exact(self, size: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            chunk = self._recv_some(size - len(buf), deadline)
            buf += chunk
        return bytes(buf)

    def _recv_some(self, want: int, deadline: float) -> bytes:
        while True:
            # Data already queued is read even when the worker has exited since.
            try:
                chunk = self._sock.recv(min(want, 1 << 20), socket.MSG_DONTWAIT)
            except BlockingIOError:
                chunk = None
            if chunk is not None:
                if not chunk:
                    raise PeerGone
                return chunk
            left = deadline - time.monotonic()
            if left <= 0:
                raise Deadline
            events = self._poll.poll(left * 1000 + 0.5)
            if any(fd == self._pidfd for fd, _ in events) and not any(
                fd == self._fd for fd, _ in events
            ):
                # The worker is gone; whatever it wrote is already in the socket.
                try:
                    chunk = self._sock.recv(min(want, 1 << 20), socket.MSG_DONTWAIT)
                except BlockingIOError:
                    raise PeerGone from None
                if not chunk:
                    raise PeerGone
                return chunk
