#!/usr/bin/env python3
"""The origin of examples/fleet, on 127.0.0.1 only.

Usage: origin.py PORT
  GET /        200 "hello from the origin"
  GET /429     429 "slow down" (the fleet's exchange "demo" bans the exit)
Everything else is 404.  Keep-alive (HTTP/1.1, Content-Length).
"""
import http.server
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, text):
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/":
            self.answer(200, "hello from the origin")
        elif self.path == "/429":
            self.answer(429, "slow down")
        else:
            self.answer(404, "not found")


if __name__ == "__main__":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
