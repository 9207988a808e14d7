#!/usr/bin/env python3
"""The origin of examples/fleet, on 127.0.0.1 only.

Usage: origin.py PORT
  GET /        200 "hello from the origin"
  GET /429     429 "slow down" (the fleet's exchange "demo" bans the exit)
Everything else is 404.  Keep-alive (HTTP/1.1, Content-Length).
"""
import http.server
import socketserver
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, text):
        # Head and body in one write: a reply split in two small writes
        # waits out the client's delayed ACK (some 40 ms) between them.
        body = (text + "\n").encode()
        head = "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % (
            status, self.responses.get(status, ("",))[0], len(body))
        self.wfile.write(head.encode() + body)
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/":
            self.answer(200, "hello from the origin")
        elif self.path == "/429":
            self.answer(429, "slow down")
        else:
            self.answer(404, "not found")


class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        # HTTPServer's own looks the host name up (getfqdn), which can
        # take seconds; the name is not used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]


if __name__ == "__main__":
    server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
