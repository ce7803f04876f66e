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
# Plain ints: or-ing the enum flags on every call cost more than the recv itself.
_NOW = int(socket.MSG_DONTWAIT)
_FD_SETSIZE = 1024


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


class BlockingReader:
    """Worker side: frames from the orchestrator, waiting as long as it takes. One
    `recv` usually holds a whole frame, its header and body together."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def read(self) -> bytes | None:
        """The next frame; None when the orchestrator is gone."""
        buf = self._buf
        need = _HEADER.size
        while True:
            if len(buf) >= _HEADER.size:
                need = _HEADER.size + _HEADER.unpack_from(buf)[0]
                if len(buf) >= need:
                    frame = bytes(buf[_HEADER.size : need])
                    del buf[:need]
                    return frame
            chunk = self._sock.recv(min(max(need - len(buf), 1 << 16), 1 << 20))
            if not chunk:
                return None
            buf += chunk


class FrameReader:
    """Orchestrator side: one frame from a worker, or an exception saying why not.

    It reads whatever is available into a buffer (one `recv` usually holds the whole
    answer) and waits only when the buffer is short.
    """

    def __init__(self, sock: socket.socket, pidfd: int) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._pidfd = pidfd
        self._buf = bytearray()
        # recv(n) allocates n bytes before it knows how many came: with n = 1 MiB that
        # cost more than the rest of a call. A reused buffer costs nothing.
        self._chunk = memoryview(bytearray(1 << 16))
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._poll.register(pidfd, select.POLLIN)
        # `select` takes its timeout in µs, but only descriptors below FD_SETSIZE.
        self._fine = (self._fd, pidfd) if max(self._fd, pidfd) < _FD_SETSIZE else None

    def read(self, deadline: float, max_size: int) -> bytes:
        while len(self._buf) < _HEADER.size:
            self._fill(deadline)
        (size,) = _HEADER.unpack_from(self._buf)
        if size > max_size:
            raise Oversized(size)
        end = _HEADER.size + size
        while len(self._buf) < end:
            self._fill(deadline)
        frame = bytes(self._buf[_HEADER.size : end])
        del self._buf[:end]
        return frame

    def ready(self) -> bool:
        """Whether the worker may take another call, in one system call: nothing has
        come past its last frame (no byte, no end of file, no error on the socket; a
        worker whose socket holds more than its answer is never given another call)
        and no exit on its pidfd."""
        return not self._buf and not self._poll.poll(0)

    def _fill(self, deadline: float) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Deadline
            ready = self._wait(left)
            if not ready:
                continue
            # Data already queued is read even when the worker has exited since.
            try:
                size = self._sock.recv_into(self._chunk, 0, _NOW)
            except BlockingIOError:
                if self._pidfd in ready:
                    raise PeerGone from None  # exited, and nothing left to read
                continue
            except OSError:
                raise PeerGone from None
            if not size:
                raise PeerGone
            self._buf += self._chunk[:size]
            return

    def _wait(self, left: float) -> list[int]:
        """The descriptors readable within `left` seconds, waking at the deadline
        itself: `poll` rounds its timeout up to the next whole ms (a deadline's kill
        came up to 1 ms late), so it waits the whole ms in it and `select` the rest."""
        ms = int(left * 1000)
        if ms or self._fine is None:
            return [fd for fd, _ in self._poll.poll(ms or 1)]
        readable, _, _ = select.select(self._fine, (), (), left)
        return readable
