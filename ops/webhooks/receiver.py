#!/usr/bin/env python3
"""A scripted webhook receiver for orderd's tests, verifying every request with the Standard
Webhooks reference library (PyPI `standardwebhooks`), not with orderd's code.

Listens on 127.0.0.1 (a free port, printed as the first line: `PORT <n>`). Every POST to a path
is recorded and answered from that path's script; the last step of a script repeats, and a path
without a script answers 200. Control (JSON):

  PUT  /_control/script/<path>   [{"status": 500}, {"status": 200, "delay_s": 3},
                                  {"status": 429, "retry_after": "2"}, ...]
  PUT  /_control/secrets/<path>  ["whsec_...", ...]   secrets to verify <path>'s requests with
  GET  /_control/log             every request: {"path", "id", "timestamp", "signature",
                                  "body", "status", "at", "delay_s", "verified": [bool per secret]}

Usage: receiver.py
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

LOCK = threading.Lock()
SCRIPTS = {}
SECRETS = {}
LOG = []


def verify(secret, body, headers):
    try:
        Webhook(secret).verify(body, headers)
        return True
    except Exception:  # noqa: BLE001 - any failure is "does not verify"
        return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n)

    def do_GET(self):
        if self.path == "/_control/log":
            with LOCK:
                data = json.dumps(LOG).encode()
            self.reply(200, data, [("Content-Type", "application/json")])
        else:
            self.reply(404)

    def do_PUT(self):
        data = json.loads(self.body() or b"null")
        for prefix, table in (("/_control/script", SCRIPTS), ("/_control/secrets", SECRETS)):
            if self.path.startswith(prefix + "/"):
                with LOCK:
                    table[self.path[len(prefix):]] = list(data)
                self.reply(204)
                return
        self.reply(404)

    def do_POST(self):
        body = self.body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        with LOCK:
            script = SCRIPTS.get(self.path) or [{"status": 200}]
            step = script.pop(0) if len(script) > 1 else script[0]
            secrets = list(SECRETS.get(self.path, []))
        verified = [verify(s, body, headers) for s in secrets]
        entry = {
            "path": self.path,
            "id": headers.get("webhook-id"),
            "timestamp": headers.get("webhook-timestamp"),
            "signature": headers.get("webhook-signature"),
            "body": body.decode("utf-8", "replace"),
            "status": step.get("status", 200),
            "at": time.time(),
        "delay_s": step.get("delay_s", 0),
            "verified": verified,
        }
        with LOCK:
            LOG.append(entry)
        if step.get("delay_s"):
            time.sleep(step["delay_s"])
        extra = [("Retry-After", str(step["retry_after"]))] if "retry_after" in step else []
        try:
            self.reply(entry["status"], b"", extra)
        except (BrokenPipeError, ConnectionResetError):
            pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
