#!/usr/bin/env python3
"""A broker endpoint that answers badly, for the broker client's specs.

fake_broker.py MODE PORT [PROXY_URL]
  garbage  200 with a body that is not JSON
  error    500
  denied   401 (a refused token)
  hang     reads the request and never answers
  invalid  200 with a lease whose proxy_url is not a proxy URL
  chunked  200 with a valid lease of PROXY_URL (TTL 30 s), the body chunked
  huge     200 with a 2 MiB body (over the client's bound)
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
        if MODE == "chunked":
            body = ('{"proxy_url":"%s","ttl_seconds":30,"strategy":"fake",'
                    '"fallback_policy":"any","metadata":{"proxy_id":"f1"}}' % sys.argv[3]).encode()
            if self.path.endswith("/feedback"):
                body = b'{"accepted":1,"refused":0,"results":[]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 7):
                part = body[i:i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        status, body = 200, b"<html>this is not json"
        if MODE == "error":
            status, body = 500, b'{"error":"internal"}'
        elif MODE == "denied":
            status, body = 401, b'{"error":"FERRY-7005","message":"bad token"}'
        elif MODE == "huge":
            body = b"[" + b" " * (2 * 1024 * 1024) + b"]"
        elif MODE == "invalid":
            body = b'{"proxy_url":"gopher://user:secret@[nope","ttl_seconds":30,"strategy":"x"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
