#!/usr/bin/env python3
"""rate_origin.py PORT: an origin that logs when each request arrived and
through which proxy, for the rate-budget specs.

It answers absolute-form targets too, so it also stands in for the
upstream HTTP proxies themselves: a spec points two ferry proxies (with
distinct ids) at this port and gives each a header `X-Src: NAME`
(the proxy entry's `headers`), which tells the origin who sent it.
Every answer is keep-alive.  Paths:
  GET /ok?i=N          "ok-N", logged
  GET /retry?s=S       429 with Retry-After: S, logged
  GET /limit?left=L&reset=R  200 with X-RateLimit-Remaining: L and
                       X-RateLimit-Reset: R, logged
  GET /used?w=W        200 with X-Used-Weight: W, logged
  GET /log             JSON [[src, t], ...] of every logged request
                       (t: time.monotonic() at arrival)
  GET /reset           forget the log"""
import json
import socket
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

PORT = int(sys.argv[1])
lock = threading.Lock()
log = []


def answer(conn, body, status="200 OK", extra=""):
    conn.sendall(("HTTP/1.1 %s\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n%s\r\n"
                  % (status, len(body), extra)).encode() + body)


def serve(conn):
    data = b""
    try:
        while True:
            while b"\r\n\r\n" not in data:
                more = conn.recv(65536)
                if not more:
                    return
                data += more
            head, data = data.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            target = lines[0].split(" ")[1]
            src = "-"
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                if k.strip().lower() == "x-src":
                    src = v.strip()
            u = urlsplit(target)
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            if u.path == "/log":
                with lock:
                    answer(conn, json.dumps(log).encode())
                continue
            if u.path == "/reset":
                with lock:
                    log.clear()
                answer(conn, b"reset")
                continue
            with lock:
                log.append([src, time.monotonic()])
            if u.path == "/retry":
                answer(conn, b"slow down", "429 Too Many Requests",
                       "Retry-After: %s\r\n" % q.get("s", "1"))
            elif u.path == "/limit":
                answer(conn, b"limit", extra="X-RateLimit-Remaining: %s\r\nX-RateLimit-Reset: %s\r\n"
                       % (q.get("left", "0"), q.get("reset", "1")))
            elif u.path == "/used":
                answer(conn, b"used", extra="X-Used-Weight: %s\r\n" % q.get("w", "0"))
            else:
                answer(conn, ("ok-%s" % q.get("i", "")).encode())
    except OSError:
        pass
    finally:
        conn.close()


def main():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", PORT))
    s.listen(512)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
