#!/usr/bin/env python3
"""cache_origin.py PORT: an HTTP/1.1 origin for the cache specs.

It counts every request by target (path and query) and answers each path
with the caching headers one rule needs.  Bodies carry the count, so a
client sees whether an answer came from the origin again.
  GET /count?t=TARGET   {"n": requests for TARGET, "n304": 304s sent for it}
  GET /reset            forget every count
  /fresh                max-age=300
  /etag                 max-age=2, ETag "v1"; If-None-Match "v1" -> 304
  /lm                   max-age=1, Last-Modified; If-Modified-Since -> 304
  /vary                 max-age=300, Vary: Accept-Encoding; body names the value
  /varystar             max-age=300, Vary: *
  /nostore /private     no-store / private (with max-age=300)
  /cookie               Set-Cookie, max-age=300;   /cookiepublic: and public
  /auth                 max-age=300 (asked with Authorization); /authpublic: public
  /plain                no Cache-Control at all (the configured ttl applies)
  /slow?s=S             max-age=300 after S seconds
  /sie                  max-age=1, stale-if-error=300
  /fail                 503 (stale-if-error is not in play: counts only)
  /chunked              max-age=300, chunked
  /big?n=N[&chunked=1]  N bytes of a fixed pattern, max-age=300
  /bigsum?n=N           sha256 hex of /big?n=N's body
  /item/...             max-age=300; POST/PUT/DELETE answer 200 (Location: /loc/...)
  /short                max-age=300, Content-Length 1000, 10 bytes, then the close
  /smaxage              s-maxage=300, max-age=0
  /expires              Expires 300 s after Date, no Cache-Control
  /mustreval            max-age=1, must-revalidate, stale-if-error=300
  /swr                  max-age=1, stale-while-revalidate=300
  /aged                 max-age=300 with Age: 299
  /failing              max-age=1, stale-if-error=300
  /break?p=PATH         from now on PATH answers 503
  /hang?p=PATH          from now on PATH answers after 3 seconds
"""
import email.utils
import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PORT = int(sys.argv[1])
lock = threading.Lock()
counts = {}
counts304 = {}
broken = set()
hung = set()
LM = "Tue, 01 Dec 2026 10:00:00 GMT"
PATTERN = bytes(range(256)) * 4096  # 1 MiB


def pattern_chunks(n):
    left = n
    while left > 0:
        k = min(left, len(PATTERN))
        yield PATTERN[:k]
        left -= k


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body=b"", headers=None, chunked=False):
        self.send_response(status)
        for k, v in (headers or {}).items():
            if isinstance(v, list):
                for x in v:
                    self.send_header(k, x)
            else:
                self.send_header(k, v)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 1000):
                part = body[i:i + 1000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        else:
            if status not in (204, 304):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if status not in (204, 304) and self.command != "HEAD":
                self.wfile.write(body)

    def count(self, target, is304=False):
        with lock:
            counts[target] = counts.get(target, 0) + 1
            if is304:
                counts304[target] = counts304.get(target, 0) + 1
            return counts[target]

    def handle_any(self):
        u = urlsplit(self.path)
        target = u.path + ("?" + u.query if u.query else "")
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        p = u.path
        if p == "/count":
            with lock:
                t = q.get("t", "")
                body = json.dumps({"n": counts.get(t, 0), "n304": counts304.get(t, 0)})
            return self.send(200, body.encode(), {"Content-Type": "application/json"})
        if p == "/break":
            with lock:
                broken.add(q.get("p", ""))
            return self.send(200, b"broken")
        if p == "/hang":
            with lock:
                hung.add(q.get("p", ""))
            return self.send(200, b"hung")
        if p == "/reset":
            with lock:
                counts.clear()
                counts304.clear()
            return self.send(200, b"reset")
        if p == "/bigsum":
            h = hashlib.sha256()
            for part in pattern_chunks(int(q.get("n", "0"))):
                h.update(part)
            return self.send(200, h.hexdigest().encode())
        if p == "/big":
            k = self.count(target)
            size = int(q.get("n", "0"))
            if q.get("chunked"):
                self.send_response(200)
                self.send_header("Cache-Control", "max-age=300")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for part in pattern_chunks(size):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
                return None
            self.send_response(200)
            self.send_header("Cache-Control", "max-age=300")
            self.send_header("Content-Length", str(size))
            self.send_header("X-Count", str(k))
            self.end_headers()
            if self.command != "HEAD":
                for part in pattern_chunks(size):
                    self.wfile.write(part)
            return None
        inm = self.headers.get("If-None-Match")
        ims = self.headers.get("If-Modified-Since")
        if p == "/etag" and inm and '"v1"' in inm:
            self.count(target, True)
            return self.send(304, headers={"ETag": '"v1"', "Cache-Control": "max-age=2"})
        if p == "/lm" and ims == LM:
            self.count(target, True)
            return self.send(304, headers={"Last-Modified": LM, "Cache-Control": "max-age=1"})
        if p == "/nocache" and inm and '"n1"' in inm:
            self.count(target, True)
            return self.send(304, headers={"ETag": '"n1"', "Cache-Control": "max-age=300"})
        k = self.count(target)
        body = ("%s %s #%d" % (self.command, target, k)).encode()
        with lock:
            down, slow = p in broken, p in hung
        if slow:
            time.sleep(3)
        if down:
            return self.send(503, body)
        if p == "/short":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=300\r\n"
                             b"Content-Length: 1000\r\n\r\n0123456789")
            self.wfile.flush()
            self.close_connection = True
            return None
        if self.command in ("POST", "PUT", "DELETE", "PATCH"):
            return self.send(200, body, {"Location": "/loc" + u.path})
        h = {"Cache-Control": "max-age=300", "X-Count": str(k)}
        if p == "/etag":
            h = {"Cache-Control": "max-age=2", "ETag": '"v1"', "X-Count": str(k)}
        elif p == "/lm":
            h = {"Cache-Control": "max-age=1", "Last-Modified": LM, "X-Count": str(k)}
        elif p == "/nocache":
            h["ETag"] = '"n1"'
        elif p == "/vary":
            h["Vary"] = "Accept-Encoding"
            body += (" enc=%s" % self.headers.get("Accept-Encoding", "-")).encode()
        elif p == "/varystar":
            h["Vary"] = "*"
        elif p == "/nostore":
            h["Cache-Control"] = "no-store, max-age=300"
        elif p == "/private":
            h["Cache-Control"] = "private, max-age=300"
        elif p == "/cookie":
            h["Set-Cookie"] = "s=1"
        elif p == "/cookiepublic":
            h["Set-Cookie"] = "s=1"
            h["Cache-Control"] = "public, max-age=300"
        elif p == "/authpublic":
            h["Cache-Control"] = "public, max-age=300"
        elif p == "/plain":
            del h["Cache-Control"]
        elif p == "/slow":
            time.sleep(float(q.get("s", "0.5")))
        elif p == "/sie":
            h["Cache-Control"] = "max-age=1, stale-if-error=300"
        elif p == "/fail":
            return self.send(503, body, {"Retry-After": "1"})
        elif p == "/smaxage":
            h["Cache-Control"] = "s-maxage=300, max-age=0"
        elif p == "/expires":
            del h["Cache-Control"]
            h["Expires"] = email.utils.formatdate(time.time() + 300, usegmt=True)
        elif p == "/mustreval":
            h["Cache-Control"] = "max-age=1, must-revalidate, stale-if-error=300"
        elif p == "/swr":
            h["Cache-Control"] = "max-age=1, stale-while-revalidate=300"
        elif p == "/aged":
            h["Age"] = "299"
        elif p in ("/failing", "/hanging"):
            h["Cache-Control"] = "max-age=1, stale-if-error=300"
        return self.send(200, body, h, chunked=p == "/chunked")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = handle_any


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


if __name__ == "__main__":
    Server(("127.0.0.1", PORT), Handler).serve_forever()
