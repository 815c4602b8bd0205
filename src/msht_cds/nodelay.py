"""uvicorn's h11 protocol with TCP_NODELAY set on every connection.

With `--workers` > 1, uvicorn binds the listening socket itself and asyncio does not enable
TCP_NODELAY on the accepted sockets, so Nagle's algorithm holds each response body until the
client acknowledges the headers: ~40 ms per keep-alive call with Linux's delayed ACKs.
Setting the option per connection works however uvicorn bound the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol


class NoDelayH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
