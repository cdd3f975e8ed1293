"""Hardening defects of issue 13, each shown by trying it on real parts (a real redis-server, a real TCP proxy).

1. A lost EXEC reply never fills an order twice: the proxy forwards the transaction, lets Redis run it, and
   drops the connection before the reply reaches the client; the retry finds the order's own idempotency record.
2. Absurd but finite prices (1e308, a covariance entry of 1e300) never make the gate raise or the monitor stop:
   the gate rejects with a code, the monitor skips that portfolio's snapshot with a logged reason, good data
   recovers.
3. CSV exports neutralise formula cells (OWASP CSV injection): text starting with ``= + - @``, tab or CR gets a
   leading ``'``; numbers, negative ones included, stay numbers.
4. Misspelled top-level sections, a file without portfolios, and a file that never mentions ``alert_rules`` are
   errors naming what is wrong (the nearest valid section for a typo).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import redis

import warmup
from engine.redis_server import EmbeddedRedis
from engine.settings import Settings
from engine.store import Store
from logic.risk_manager import RiskManager

NOW = 1_700_000_000.0


# -- 1. a lost EXEC reply ------------------------------------------------------------------------------------


class ExecDroppingProxy:
    """A TCP proxy in front of the test's unix-socket Redis that, once armed, forwards the first transaction's
    EXEC to the server, waits for the server's reply (so the transaction has run) and then closes the client's
    connection instead of forwarding that reply: the client sees its connection drop after EXEC."""

    def __init__(self, unix_path: str) -> None:
        self.unix_path = unix_path
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.armed = False
        self.dropped = 0
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.closing = False
        self._spawn(self._accept)

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
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.unix_path)
            self.sockets += [client, upstream]
            exec_sent = threading.Event()
            self._spawn(self._client_to_server, client, upstream, exec_sent)
            self._spawn(self._server_to_client, upstream, client, exec_sent)

    def _client_to_server(self, client: socket.socket, upstream: socket.socket, exec_sent: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                with self.lock:
                    drop = self.armed and b"\r\nEXEC\r\n" in data
                    if drop:
                        self.armed = False
                if drop:
                    exec_sent.set()
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def _server_to_client(self, upstream: socket.socket, client: socket.socket, exec_sent: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if exec_sent.is_set():
                    # Redis answers a whole pipeline in one write: this chunk holds the EXEC reply. The transaction
                    # has run; the client never learns it.
                    self.dropped += 1
                    client.shutdown(socket.SHUT_RDWR)
                    client.close()
                    upstream.close()
                    return
                client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closing = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self.threads:
            thread.join(timeout=5)


@contextlib.contextmanager
def exec_dropping_proxy(server: EmbeddedRedis) -> Iterator[ExecDroppingProxy]:
    proxy = ExecDroppingProxy(str(server.socket_path))
    try:
        yield proxy
    finally:
        proxy.close()


def test_execute_trade_without_client_order_id_when_exec_reply_is_lost_then_fills_exactly_once(
    redis_server: EmbeddedRedis, store: Store, settings: Settings
) -> None:
    # Arrange: a seeded desk, a manager talking to Redis through the proxy
    warmup.seed(store, settings, now=NOW)
    before = store.read_portfolio("main").positions["AAA"].qty
    with exec_dropping_proxy(redis_server) as proxy:
        client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=10)
        try:
            rm = RiskManager(client, "main", settings, clock=lambda: NOW)
            proxy.armed = True

            # Act: the first EXEC runs on the server and its reply is lost
            result = rm.execute_trade("AAA", 10, "BUY")
        finally:
            client.close()

    # Assert: the drop happened, and the position moved by exactly the order's size, once
    assert proxy.dropped == 1
    after = store.read_portfolio("main").positions["AAA"].qty
    assert after - before == 10
    assert result["status"] == "FILLED", result  # the stored fill, found by the retry (duplicate=True)
    assert result["duplicate"] is True
    assert result["fill"]["qty"] == 10
    assert result["client_order_id"].startswith("gen-")
    assert result["fill"]["position_after"] == after
    fills = [r for r in store.read_trade_log("main") if r.get("fill")]
    assert len(fills) == 1
