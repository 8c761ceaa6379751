"""An app whose answer comes after its work: each POST's X-Request-Id is written to its
ledger first, then it answers AFTER_WORK_STATUS (503: a failure HAProxy must not take for
"not processed"). /readyz answers 200."""

from __future__ import annotations

import http.server
import os

port = int(os.environ["AFTER_WORK_PORT"])
status = int(os.environ.get("AFTER_WORK_STATUS", "503"))
ledger = open(os.environ["AFTER_WORK_LEDGER"], "a", buffering=1)  # noqa: SIM115


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.answer(200)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        ledger.write(self.headers.get("x-request-id", "-") + "\n")
        self.answer(status)

    def answer(self, code: int) -> None:
        self.send_response(code)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
