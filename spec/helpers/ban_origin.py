#!/usr/bin/env python3
"""An origin that bans by source address, for the retry-on-ban specs.

Usage: ban_origin.py PORT [CERT KEY]   (with CERT and KEY: HTTPS)

Proxies that bind their outgoing connections to distinct loopback
addresses (microsocks -b 127.0.0.N) are told apart by the source address.
Every request (any method; a body is read whole by Content-Length) is
answered per its path:
  /ban/ADDRS/STATUS[/RA]  STATUS (with "Retry-After: RA", %20 for spaces)
                          when the source address is in ADDRS (comma-
                          separated, "all" for every address), body
                          "banned ADDR"; else 200 "ok ADDR"
  /marker/ADDRS           200 with body "IP banned ADDR" for ADDRS, else
                          200 "ok ADDR"
The "ok" answer also gives the request body's length: "ok ADDR LEN".
  /stall/ADDRS            for ADDRS: 429 with Content-Length 1000 and only
                          10 bytes of body, then silence; else 200 "ok ADDR"
  /held/ADDRS/STATUS/N     for ADDRS: STATUS, once N requests of this path
                          have arrived (5 s at most); else 200 "ok ADDR"
  /hits                   text: "ADDR PATH" per request so far, one a line
Answers keep the connection open (HTTP/1.1, Content-Length).
"""
import http.server
import ssl
import sys
import threading
import time
import urllib.parse

lock = threading.Lock()
hits = []


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, extra=()):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        left = n
        while left > 0:  # read whole before answering: the proxy sent it all
            got = self.rfile.read(min(left, 65536))
            if not got:
                break
            left -= len(got)
        addr = self.client_address[0]
        path = urllib.parse.urlsplit(self.path).path
        if path == "/hits":
            with lock:
                text = "".join("%s %s\n" % h for h in hits)
            self.answer(200, text)
            return
        with lock:
            hits.append((addr, path))
        parts = path.split("/")
        if len(parts) >= 4 and parts[1] == "ban":
            addrs = parts[2].split(",")
            if "all" in addrs or addr in addrs:
                extra = []
                if len(parts) >= 5:
                    extra.append(("Retry-After", urllib.parse.unquote(parts[4])))
                self.answer(int(parts[3]), "banned %s" % addr, extra)
                return
        if len(parts) >= 5 and parts[1] == "held" and addr in parts[2].split(","):
            # Answers only once N such requests have arrived (5 s at most),
            # so N are in flight through the proxy when the first is banned.
            want = int(parts[4])
            deadline = time.time() + 5
            while time.time() < deadline:
                with lock:
                    if sum(1 for h in hits if h[1] == path) >= want:
                        break
                time.sleep(0.01)
            self.answer(int(parts[3]), "banned %s" % addr)
            return
        if len(parts) >= 3 and parts[1] == "stall" and addr in parts[2].split(","):
            self.wfile.write(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 1000\r\n"
                             b"\r\n0123456789")
            self.wfile.flush()
            time.sleep(30)
            self.close_connection = True
            return
        if len(parts) >= 3 and parts[1] == "marker":
            addrs = parts[2].split(",")
            if "all" in addrs or addr in addrs:
                self.answer(200, "IP banned %s" % addr)
                return
        self.answer(200, "ok %s %d" % (addr, n - left))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = handle_any


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
    if len(sys.argv) >= 4:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[2], sys.argv[3])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
