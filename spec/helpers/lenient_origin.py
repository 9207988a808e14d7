#!/usr/bin/env python3
"""lenient_origin.py PORT LOGFILE: a deliberately lenient HTTP/1.1 origin.

Python's BaseHTTPRequestHandler executes whatever framing it is given: it
reads a body by Content-Length only (never chunked), ignores a field name
with a space before its colon, and parses whatever follows as the next
request on the connection.  Every request line it executes is appended to
LOGFILE, so a spec can prove that a hidden request never ran."""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
LOG = sys.argv[2]


class Lenient(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self):
        with open(LOG, "a") as f:
            f.write("%s %s\n" % (self.command, self.path))
        n = self.headers.get("Content-Length")
        body = b""
        if n is not None and n.strip().isdigit():
            body = self.rfile.read(int(n))
        out = ("%s %s via=%s mf=%s len=%d\n" % (
            self.command, self.path, self.headers.get("Via"),
            self.headers.get("Max-Forwards"), len(body))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_HEAD = do_OPTIONS = do_TRACE = do_DELETE = answer


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Lenient).serve_forever()
