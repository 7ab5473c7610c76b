"""A small TCP proxy for fault tests: put it between a process and a server
(PostgreSQL, the API) and cut the line while the test watches.

    proxy = TcpProxy("127.0.0.1", 5432)     # listens on 127.0.0.1:proxy.port
    proxy.cut()      # refuse new connections, reset the open ones
    proxy.restore()  # listen again on the same port

While cut, the port is closed, so a client's connect fails at once with
"connection refused", as it would against a stopped server; open connections
are closed with a TCP reset, as a crash or a network fault would leave them.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

_BUFFER = 65536


class TcpProxy:
    """Forwards every connection on ``127.0.0.1:port`` to ``upstream_host:upstream_port``."""

    def __init__(self, upstream_host: str, upstream_port: int, *, port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.connections = 0  # connections accepted so far
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._closed = False
        self.port = self._listen(port)

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        with self._lock:
            listener, self._listener = self._listener, None
            doomed, self._open = self._open, set()
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would
            # leave the port listening until that call returned.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            _close(listener)
        for sock in doomed:
            _reset(sock)

    def restore(self) -> None:
        """Accept connections again, on the same port."""
        if self._listener is None and not self._closed:
            self._listen(self.port)

    def close(self) -> None:
        self._closed = True
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _listen(self, port: int) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener.getsockname()[1]

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed: cut or closed
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    _reset(client)
                    _reset(server)
                    return
                self.connections += 1
                self._open.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        reset = False
        try:
            while data := src.recv(_BUFFER):
                dst.sendall(data)
        except OSError:
            reset = True
        # One side ended (or was reset by cut()): end the other one the same way.
        with self._lock:
            known = src in self._open
            self._open.discard(src)
            self._open.discard(dst)
        if known:
            if reset:
                _reset(dst)
            else:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_RDWR)
                _close(dst)
            _close(src)


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (linger on, timeout zero). Shutting down
    the read side first wakes a thread blocked in ``recv`` on it, which would
    otherwise keep the socket open."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
