"""A byte relay: every connection accepted on one socket is joined to a new connection ``connect()`` makes, and
bytes are copied both ways until both sides are done. It parses nothing (the egress proxy does).

Standard library only: the exec server runs it inside the sandbox (127.0.0.1:PORT → the proxy's Unix socket,
copied into the control folder beside it), and the worker runs it outside (that Unix socket → the proxy, from
the sandbox's own source address). One thread serves every connection of a relay (non-blocking sockets and a
selector), so a command that opens many connections costs file descriptors up to ``limit``, never threads.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Callable

LOOPBACK_PORT = 3128
"""Where commands find the egress proxy inside a sandbox (``HTTP_PROXY=http://127.0.0.1:3128``)."""
SOCKET_NAME = "proxy.sock"
"""The proxy's Unix socket, in the folder the worker mounts at /overnight/egress."""
BUFFER = 65536
"""Bytes read at once, and most kept waiting for a slow side before reading from the other one stops."""


class _Side:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = bytearray()
        """Bytes read from the other side, not yet written to this one."""
        self.eof = False
        """The other side will send no more: shut this one's writing down once ``pending`` is written."""
        self.shut = False
        self.events = 0
        """What the selector watches this socket for (0: not registered)."""


class Relay:
    """Serve ``listener`` (bound and listening) in a thread until ``close``."""

    def __init__(self, listener: socket.socket, connect: Callable[[], socket.socket], *, limit: int = 128) -> None:
        self.listener = listener
        self.connect = connect
        self.limit = limit
        self.selector = selectors.DefaultSelector()
        self.pairs: dict[socket.socket, tuple[_Side, _Side]] = {}
        self._wake_read, self._wake_write = socket.socketpair()
        self._closing = False
        self.accepted = 0
        """Connections accepted so far."""
        self.thread = threading.Thread(target=self._serve, name="overnight-relay", daemon=True)

    def start(self) -> Relay:
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close every connection (and the listener); safe to call twice."""
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout=5)

    @property
    def open_connections(self) -> int:
        return len(self.pairs) // 2

    def _serve(self) -> None:
        try:
            while not self._closing:
                for key, _ in self.selector.select():
                    if key.data == "accept":
                        self._accept()
                    elif key.data != "wake":
                        self._pump(key.fileobj)  # type: ignore[arg-type]
        finally:
            for sock in list(self.pairs):
                self._drop(sock)
            self.selector.close()
            for sock in (self.listener, self._wake_read, self._wake_write):
                sock.close()

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        if len(self.pairs) >= 2 * self.limit:
            client.close()
            return
        try:
            upstream = self.connect()
        except Exception:  # the proxy cannot be reached (or started again): the client sees its connection end
            client.close()
            return
        self.accepted += 1
        client_side, upstream_side = _Side(client), _Side(upstream)
        for sock, side, other in ((client, client_side, upstream_side), (upstream, upstream_side, client_side)):
            sock.setblocking(False)
            self.pairs[sock] = (side, other)
        self._interest(client_side, upstream_side)
        self._interest(upstream_side, client_side)

    def _pump(self, sock: socket.socket) -> None:
        """Write what waits for ``sock``, read what it has into its partner's buffer (and pass it on at once),
        shut a side's writing down once the other side ended and everything was passed on; update interests."""
        if sock not in self.pairs:
            return
        side, other = self.pairs[sock]
        try:
            self._flush(side)
            if not other.eof and len(other.pending) < BUFFER:
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    data = sock.recv(BUFFER)
                    if data:
                        other.pending += data
                    else:
                        other.eof = True
            self._flush(other)
            for target in (side, other):
                if target.eof and not target.pending and not target.shut:
                    target.sock.shutdown(socket.SHUT_WR)
                    target.shut = True
        except OSError:
            self._drop(sock)
            return
        if side.shut and other.shut:
            self._drop(sock)
            return
        self._interest(side, other)
        self._interest(other, side)

    @staticmethod
    def _flush(side: _Side) -> None:
        if side.pending:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                del side.pending[: side.sock.send(side.pending)]

    def _interest(self, side: _Side, other: _Side) -> None:
        """Read from ``side`` while its partner's buffer has room and it has not ended; write while bytes wait
        for it; neither: off the selector until the other side moves (a readable socket would wake it forever)."""
        events = 0
        if not other.eof and len(other.pending) < BUFFER:
            events |= selectors.EVENT_READ
        if side.pending:
            events |= selectors.EVENT_WRITE
        if events == side.events:
            return
        if side.events == 0:
            self.selector.register(side.sock, events, "data")
        elif events == 0:
            self.selector.unregister(side.sock)
        else:
            self.selector.modify(side.sock, events, "data")
        side.events = events

    def _drop(self, sock: socket.socket) -> None:
        pair = self.pairs.pop(sock, None)
        if pair is None:
            return
        for side in pair:
            self.pairs.pop(side.sock, None)
            if side.events:
                self.selector.unregister(side.sock)
                side.events = 0
            side.sock.close()


def serve_loopback(socket_path: str, port: int = LOOPBACK_PORT) -> Relay:
    """In the sandbox: 127.0.0.1:``port`` relayed to the egress proxy's Unix socket (its only way out)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)

    def connect() -> socket.socket:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(socket_path)
        except OSError:
            upstream.close()
            raise
        return upstream

    return Relay(listener, connect).start()
