"""A stand-in app for signal tests: serves /readyz, records every signal it gets, and can
leave an orphan behind (which the agent, as subreaper, must reap)."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time

port = int(os.environ["RECORDER_PORT"])
exit_code = int(os.environ.get("RECORDER_EXIT_CODE", "0"))
RECORDED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1}


class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


# Blocked before any thread starts (threads inherit the mask) and taken one by one with
# sigwaitinfo: no Python signal handler, which a second signal could run nested inside the
# first one's write (the file then raises "reentrant call" and the app dies).
signal.pthread_sigmask(signal.SIG_BLOCK, RECORDED)
if os.environ.get("RECORDER_ORPHANS"):
    # The shell exits at once; its background sleeps become orphans of the subreaper.
    subprocess.run(["sh", "-c", "sleep 0.2 & sleep 0.3 &"], check=True)
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Ready)
threading.Thread(target=server.serve_forever, daemon=True).start()
with open(os.environ["RECORDER_FILE"], "a", buffering=1) as record:
    while True:
        sig = signal.sigwaitinfo(RECORDED).si_signo
        record.write(f"{time.time():.6f} {signal.Signals(sig).name}\n")
        if sig in (signal.SIGTERM, signal.SIGINT):
            break
sys.exit(exit_code)
