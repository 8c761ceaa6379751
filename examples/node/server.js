// A plain Node.js service, unchanged by the kit: it knows nothing of HAProxy or drains.
// drain-agent (its container's PID 1, or `rollout up --app-command`) does that part.
//
//   node server.js [port]        (or PORT=8000 node server.js)
"use strict";
const crypto = require("crypto");
const http = require("http");
const os = require("os");

const port = Number(process.argv[2] || process.env.PORT || 8000);
const version = process.env.SERVICE_VERSION || "v1";
const instance = process.env.SERVICE_INSTANCE || os.hostname();

const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://localhost");
  const reply = (status, body) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
  if (url.pathname === "/healthz") return reply(200, { status: "ok" });
  if (url.pathname === "/version") return reply(200, { version, instance, pid: process.pid });
  if (url.pathname === "/cms") {
    const delay = Math.min(Number(url.searchParams.get("delay_ms") || 0), 60000);
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      if (body.length) {
        try { JSON.parse(body.toString()); } catch (e) { return reply(400, { error: "body is not valid JSON" }); }
      }
      setTimeout(() => reply(200, {
        ok: true, version, instance,
        request_id: req.headers["x-request-id"] || null,
        sha256: crypto.createHash("sha256").update(body).digest("hex"),
      }), delay);
    });
    return;
  }
  reply(404, { error: "not found" });
});

// The usual SIGTERM handling: stop accepting, let Node finish open requests, exit.
process.on("SIGTERM", () => server.close(() => process.exit(0)));
server.listen(port, "0.0.0.0", () => console.log(`listening on ${port} as ${instance} ${version}`));
