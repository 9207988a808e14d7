#!/usr/bin/env python3
"""A broker endpoint that answers badly, for the broker client's specs.

fake_broker.py MODE PORT
  garbage  200 with a body that is not JSON
  error    500
  denied   401 (a refused token)
  hang     reads the request and never answers
  invalid  200 with a lease whose proxy_url is not a proxy URL
Every request line is appended to the log (stdout) with its X-Request-Id
and whether an Authorization header came (never its value)."""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODE, PORT = sys.argv[1], int(sys.argv[2])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        print("%s %s rid=%s auth=%s" % (MODE, self.path, self.headers.get("X-Request-Id"),
              "yes" if self.headers.get("Authorization") else "no"), flush=True)
        if MODE == "hang":
            time.sleep(60)
            return
        status, body = 200, b"<html>this is not json"
        if MODE == "error":
            status, body = 500, b'{"error":"internal"}'
        elif MODE == "denied":
            status, body = 401, b'{"error":"FERRY-7005","message":"bad token"}'
        elif MODE == "invalid":
            body = b'{"proxy_url":"gopher://user:secret@[nope","ttl_seconds":30,"strategy":"x"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
