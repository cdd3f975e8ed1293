"""A unix-socket proxy in front of a test's real Redis that loses a transaction's reply the way a network does.

The client talks to Redis through :class:`FaultyRedisProxy` (``redis.Redis(unix_socket_path=proxy.path)``, or
``proxy.url`` as ``REDIS_URL``). Armed with :meth:`~FaultyRedisProxy.arm`, the proxy acts on the next request that
carries an ``EXEC``:

- ``"reset"``: forwards it, lets Redis run the transaction (until Redis has been quiet for a moment), drops the
  replies and closes the client's connection: the client sees its connection drop after Redis committed.
- ``"hold"``: forwards it and drops every reply while keeping the connection open: the client's read times out
  (``socket_timeout``) after Redis committed.
- ``"cut"``: closes the client's connection without forwarding it: the transaction never reaches Redis.

With ``then_down=True`` the proxy also goes down at that moment (:meth:`~FaultyRedisProxy.down`): every connection
is closed as soon as it is accepted, until :meth:`~FaultyRedisProxy.up`, an outage the client cannot get past.
Nothing here imitates the store: Redis runs every command it receives.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

Mode = Literal["reset", "hold", "cut"]
EXEC_REQUEST = b"\r\nEXEC\r\n"
QUIET_SECONDS = 0.2
"""How long Redis must stay silent after an EXEC before ``reset`` closes the client (its replies are all in)."""


class FaultyRedisProxy:
    def __init__(self, upstream_path: str) -> None:
        self.upstream_path = upstream_path
        self.dir = tempfile.mkdtemp(prefix="rdproxy-")
        self.path = os.path.join(self.dir, "proxy.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        self.listener.listen(64)
        self.lock = threading.Lock()
        self.mode: Mode | None = None
        self.then_down = False
        self.is_down = False
        self.faults = 0
        """Transactions whose reply was lost (or that were cut) so far."""
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.closing = False
        self._spawn(self._accept)

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def arm(self, mode: Mode, *, then_down: bool = False) -> None:
        """Act on the next request carrying an EXEC (once)."""
        with self.lock:
            self.mode, self.then_down = mode, then_down

    def down(self) -> None:
        """Close every open connection and refuse new ones (accepted, then closed at once)."""
        with self.lock:
            self.is_down = True
            open_sockets = list(self.sockets)
        for sock in open_sockets:
            _close(sock)

    def up(self) -> None:
        with self.lock:
            self.is_down = False

    def close(self) -> None:
        self.closing = True
        _close(self.listener)
        with self.lock:
            open_sockets = list(self.sockets)
        for sock in open_sockets:
            _close(sock)
        for thread in self.threads:
            thread.join(timeout=5)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self.dir)

    # -- internals -------------------------------------------------------------------------------------------

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self.threads.append(thread)

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                refused = self.is_down
            if refused:
                _close(client)
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.upstream_path)
            with self.lock:
                self.sockets += [client, upstream]
            fault: list[Mode] = []  # the mode this connection's transaction is lost with, once armed
            self._spawn(self._client_to_server, client, upstream, fault)
            self._spawn(self._server_to_client, upstream, client, fault)

    def _client_to_server(self, client: socket.socket, upstream: socket.socket, fault: list[Mode]) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if EXEC_REQUEST in data:
                    with self.lock:
                        mode, self.mode = self.mode, None
                        if mode is not None:
                            self.faults += 1
                            self.is_down = self.is_down or self.then_down  # new connections fail from now on
                    if mode == "cut":
                        break
                    if mode is not None:
                        fault.append(mode)  # before Redis can answer
                upstream.sendall(data)
        _close(client)
        _close(upstream)

    def _server_to_client(self, upstream: socket.socket, client: socket.socket, fault: list[Mode]) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if not fault:
                    client.sendall(data)
                elif fault[0] == "reset":
                    upstream.settimeout(QUIET_SECONDS)  # every reply of the transaction, then silence
                    with contextlib.suppress(TimeoutError):
                        while upstream.recv(65536):
                            pass
                    break
                # "hold": the replies vanish while the connection stays open
        _close(client)
        _close(upstream)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def faulty_proxy(upstream_path: str | Path) -> Iterator[FaultyRedisProxy]:
    proxy = FaultyRedisProxy(str(upstream_path))
    try:
        yield proxy
    finally:
        proxy.close()
