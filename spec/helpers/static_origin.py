#!/usr/bin/env python3
"""static_origin.py PORT ROOT: a static HTTP/1.1 file origin for the client
specs (spec/integration/24_clients_spec.lua).

Serves the files under ROOT with keep-alive, Content-Length and a single
`Range: bytes=A-B` / `bytes=A-` (206 with Content-Range), enough for
wget's recursive mode and `-c`, and for git's dumb HTTP protocol.  One
extra path:

  GET /close-after   answers `200 ok\\n` with Content-Length and closes the
                     connection without sending `Connection: close`: legal
                     (RFC 9112 §9.6 only says SHOULD), and what tinyproxy
                     does to every client.
  GET /big-head      answers 200 with a 20 000-byte Set-Cookie field: a
                     response head over ferry's 16 KiB buffer.
"""
import os
import re
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/close-after":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/big-head":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nSet-Cookie: big=" + b"c" * 20000 +
                             b"\r\nContent-Length: 3\r\n\r\nok\n")
            self.wfile.flush()
            return
        super().do_GET()

    def send_head(self):
        path = self.translate_path(self.path)
        m = RANGE.match(self.headers.get("Range", ""))
        if not m or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
        if start >= size or end < start:
            self.send_response(416)
            self.send_header("Content-Range", "bytes */%d" % size)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        end = min(end, size - 1)
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._left = end - start + 1
        return f

    def copyfile(self, source, outputfile):
        left = getattr(self, "_left", None)
        if left is None:
            return super().copyfile(source, outputfile)
        while left > 0:
            piece = source.read(min(left, 1 << 16))
            if not piece:
                break
            outputfile.write(piece)
            left -= len(piece)
        self._left = None


def main():
    root = sys.argv[2]
    handler = lambda *a, **kw: Handler(*a, directory=root, **kw)  # noqa: E731
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler).serve_forever()


if __name__ == "__main__":
    main()
