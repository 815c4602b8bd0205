"""`run.py --nodelay-fix`: both servers get the fix for uvicorn's multi-worker TCP_NODELAY bug.

With `--workers N > 1`, uvicorn (0.54) binds the listening socket itself with `proto` 0; the
workers' accepted sockets inherit it and asyncio only sets TCP_NODELAY when `proto` is
IPPROTO_TCP. Nagle's algorithm then holds the response body until the client ACKs the
headers, and a client with delayed ACKs (Linux's default) waits ~40 ms on every keep-alive
request (Kludex/uvicorn#3149; the upstream fix passes IPPROTO_TCP when binding). Importing this
module in the supervisor applies the same fix; the workers receive the corrected socket.
"""

from __future__ import annotations

import socket

import uvicorn.config

_bind_socket = uvicorn.config.Config.bind_socket


def _bind_socket_tcp(self: uvicorn.config.Config) -> socket.socket:
    sock = _bind_socket(self)
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    return sock


uvicorn.config.Config.bind_socket = _bind_socket_tcp  # type: ignore[method-assign]
