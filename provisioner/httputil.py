"""Small helpers for the standard library's HTTP servers (lab BMCs, the image server)."""

from __future__ import annotations

import http.server


class ClosingHandlerMixin(http.server.BaseHTTPRequestHandler):
    """Say ``Connection: close`` in every answer after which the server closes the connection.

    ``http.server`` honours a client's ``Connection: close`` (sushy sends it on every request, urllib
    always) but does not say so in its answer. RFC 9112 section 9.6 asks the server to: without the header
    a pooling client (urllib3) keeps the socket and may send its next request into the connection being
    closed, which it sees as "Remote end closed connection without response".
    """

    def end_headers(self) -> None:
        if self.close_connection:
            self.send_header("Connection", "close")
        super().end_headers()
