"""uvicorn's HTTP/1.1 connection (h11), with what a server facing untrusted clients needs around it.

* **A time limit on request heads.** uvicorn waits forever for a request head that never ends, and
  for the first byte of a new connection: 50 sockets holding partial requests hold 50 connections for
  good. Here a client has ``request_timeout`` seconds, from the moment its connection opens or its
  previous answer was sent, to send a complete head; after that it gets a 408 and the connection is
  closed, with one line in the log (an idle keep-alive connection is closed without an answer, as
  uvicorn's own keep-alive timeout does). The body is the app's to time (``zoo.app.serve.app``).
* **A time limit on slow readers.** A client that stops reading its answer would hold the answer's
  memory and its request for good (uvicorn waits for the socket to drain); when the socket has not
  accepted more bytes for ``request_timeout`` seconds, the connection is aborted, with one line in
  the log.
* **JSON errors.** uvicorn answers a request it cannot parse with a plain-text 400; here the answer
  is ``{"error": "invalid HTTP request: <what h11 found>"}``, like every other error of the server,
  with the status h11 suggests (431 for an oversized head).

:func:`connection_class` binds the timeout: uvicorn creates the connections from a class.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from http import HTTPStatus

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["connection_class"]

LOG = logging.getLogger("uvicorn.error")


class _Connection(H11Protocol):
    request_timeout: float = 30.0

    _head_timer: asyncio.TimerHandle | None = None
    _head_started = False  # bytes of a request head have arrived since the last request
    _write_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self._head_started = True
        super().data_received(data)
        if self.cycle is not cycle:  # a head was complete: the app has the request
            self._cancel_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request at once
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_write_timer()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The socket's buffer is full: the client has that long to read."""
        super().pause_writing()
        self._cancel_write_timer()
        self._write_timer = self.loop.call_later(self.request_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        self._cancel_write_timer()
        super().resume_writing()

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        LOG.info("%s read nothing of its answer for %g s: connection aborted", client, self.request_timeout)
        self.transport.abort()

    def _await_head(self) -> None:
        self._cancel_head_timer()
        self._head_started = False
        self._head_timer = self.loop.call_later(self.request_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        if not self._head_started:  # idle: nothing to answer
            self.transport.close()
            return
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        LOG.info(
            "%s sent no complete request head within %g s: answered 408, closed", client, self.request_timeout
        )
        message = f"no complete request head received within {self.request_timeout:g} s (--request-timeout-s)"
        self._send_error(408, message)

    def send_400_response(self, msg: str) -> None:
        """Called by uvicorn while handling h11's RemoteProtocolError, which says what is wrong."""
        error = sys.exc_info()[1]
        status = getattr(error, "error_status_hint", 400)
        self._send_error(status, f"invalid HTTP request: {error or msg}")

    def _send_error(self, status: int, message: str) -> None:
        """Answer ``{"error": message}`` and close the connection.

        Written as bytes, not through h11: h11 only answers a request it has parsed, and here there
        is none (a head that timed out, or one it could not parse).
        """
        body = json.dumps({"error": message}).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


def connection_class(request_timeout: float) -> type[H11Protocol]:
    """The connection class for uvicorn's ``Config(http=...)``, with that request head timeout."""
    return type("ZooConnection", (_Connection,), {"request_timeout": request_timeout})
