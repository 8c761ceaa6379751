"""A small Flask app under gunicorn, unchanged by the kit: it knows nothing of HAProxy or drains.

gunicorn's own SIGTERM handling is already graceful (stop accepting, let every worker finish
what it has in flight, exit 0); drain-agent, PID 1 of the container, makes sure HAProxy has
stopped sending requests before gunicorn gets that SIGTERM.

    gunicorn --bind 0.0.0.0:8000 --workers 3 app:app

    GET  /healthz                readiness (HAProxy's check and the agent's ready URL)
    GET  /version                {"version", "instance", "pid"}
    GET  /cms?delay_ms=N         waits N ms (at most 60 s), then answers
    POST /cms                    a JSON body: echoes x-request-id and the body's sha256
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

from flask import Flask, Response, request

VERSION = os.environ.get("SERVICE_VERSION", "v1")
INSTANCE = os.environ.get("SERVICE_INSTANCE") or socket.gethostname()
MAX_DELAY_MS = 60_000

app = Flask(__name__)


def reply(status: int, body: dict[str, object]) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json")


@app.get("/healthz")
def healthz() -> Response:
    return reply(200, {"status": "ok"})


@app.get("/version")
def version() -> Response:
    return reply(200, {"version": VERSION, "instance": INSTANCE, "pid": os.getpid()})


@app.route("/cms", methods=["GET", "POST"])
def cms() -> Response:
    try:
        delay_ms = min(max(int(request.args.get("delay_ms", "0")), 0), MAX_DELAY_MS)
    except ValueError:
        return reply(400, {"error": "delay_ms must be a whole number of milliseconds"})
    body = request.get_data()
    if body:
        try:
            json.loads(body)
        except ValueError:
            return reply(400, {"error": "body is not valid JSON"})
    time.sleep(delay_ms / 1000)
    return reply(200, {
        "ok": True, "version": VERSION, "instance": INSTANCE,
        "request_id": request.headers.get("x-request-id"),
        "sha256": hashlib.sha256(body).hexdigest(),
    })
