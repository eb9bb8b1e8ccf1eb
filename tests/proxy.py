"""A TCP proxy that a test can cut and restore, to take a server away from its clients for a while."""
from __future__ import annotations

import socket
import threading


class Proxy:
    """Listens on 127.0.0.1:`port` and forwards every connection to `target`.

    `cut()` closes every live connection and closes new ones as soon as they arrive (the server looks
    gone); `restore()` forwards again.
    """

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1"):
        self.target = target
        self.listener = socket.create_server((host, 0), reuse_port=False)
        self.host, self.port = self.listener.getsockname()[:2]
        self.lock = threading.Lock()
        self.pairs: set[tuple[socket.socket, socket.socket]] = set()
        self.open = True
        self.closed = False
        self.accepted = self.refused = 0
        self.thread = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self.thread.start()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def cut(self) -> None:
        with self.lock:
            self.open = False
            pairs, self.pairs = self.pairs, set()
        for pair in pairs:
            _close(*pair)

    def restore(self) -> None:
        with self.lock:
            self.open = True

    def close(self) -> None:
        self.closed = True
        self.cut()
        try:
            self.listener.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                forwarding = self.open
            if not forwarding:
                self.refused += 1
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            pair = (client, upstream)
            with self.lock:
                if not self.open:  # cut while this one was connecting
                    _close(*pair)
                    continue
                self.pairs.add(pair)
                self.accepted += 1
            for src, dst in (pair, pair[::-1]):
                threading.Thread(target=self._pump, args=(src, dst, pair), name="proxy-pump", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.pairs.discard(pair)
            _close(*pair)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass
