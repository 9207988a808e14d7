#!/usr/bin/env python3
"""gaps_backend.py PORT:NAME ...: keep-alive HTTP/1.1 backends for the
reverse-proxy gap specs, one listening socket per PORT:NAME, a thread per
connection.  A connection counts once its first request is not a control
one (/_...), so asking does not count.
  GET /_count             {"accepts":N,"requests":N,"peak":N} of this port
                          (peak: most counted connections open at once)
  GET /_mode?m=503|200    every later counted request answers that status
  GET /_health            200 (health checks; not counted)
  GET /long?i=N           Content-Length 5 ("long!") followed, on the same
                          write, by a whole forged response ("forged"); the
                          connection stays open
  GET /short              Content-Length 100, 10 bytes sent, then close
  GET /garbage            bytes that are not HTTP, then close
  GET /slow?s=S           NAME after S seconds
  GET /big?n=N            N bytes (a repeated pattern), Content-Length
  PUT|POST /sum           the body's sha256 (hex), read by Content-Length
  anything else           NAME (status per /_mode); ?cache=1 adds
                          Cache-Control: max-age=60"""
import hashlib
import json
import socket
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

lock = threading.Lock()
state = {}


def head(status, length, extra=""):
    return ("HTTP/1.1 %s\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n%s\r\n"
            % (status, length, extra)).encode()


def answer(conn, body, status="200 OK", extra=""):
    conn.sendall(head(status, len(body), extra) + body)


PATTERN = bytes(range(256)) * 256


def serve(conn, port, name):
    st = state[port]
    data = b""
    counted = False
    try:
        while True:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            raw, data = data.split(b"\r\n\r\n", 1)
            lines = raw.decode("latin-1").split("\r\n")
            method, target = lines[0].split(" ")[0], lines[0].split(" ")[1]
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
            url = urlsplit(target)
            q = parse_qs(url.query)
            path = url.path
            control = path.startswith("/_")
            if not control:
                with lock:
                    st["requests"] += 1
                    if not counted:
                        st["accepts"] += 1
                        st["open"] += 1
                        st["peak"] = max(st["peak"], st["open"])
                counted = True
            digest = hashlib.sha256()
            while length > 0:
                if not data:
                    data = conn.recv(min(length, 1 << 20))
                    if not data:
                        return
                take = data[:length]
                data = data[len(take):]
                length -= len(take)
                digest.update(take)
            if path == "/_count":
                answer(conn, json.dumps({"accepts": st["accepts"],
                                         "requests": st["requests"],
                                         "peak": st["peak"]}).encode())
            elif path == "/_mode":
                st["mode"] = int(q["m"][0])
                answer(conn, b"mode")
            elif path == "/_health":
                answer(conn, b"up")
            elif path == "/long":
                conn.sendall(head("200 OK", 5) + b"long!" + head("200 OK", 6) + b"forged")
            elif path == "/short":
                conn.sendall(head("200 OK", 100, "Cache-Control: max-age=60\r\n") + b"0123456789")
                return
            elif path == "/garbage":
                conn.sendall(b"SPAM SPAM SPAM\r\n\r\n")
                return
            elif path == "/big":
                n = int(q["n"][0])
                conn.sendall(head("200 OK", n))
                while n > 0:
                    piece = PATTERN[:n]
                    conn.sendall(piece)
                    n -= len(piece)
            elif path == "/slow":
                time.sleep(float(q["s"][0]))
                answer(conn, name.encode())
            elif path == "/sum":
                answer(conn, digest.hexdigest().encode())
            else:
                mode = st["mode"]
                extra = "Cache-Control: max-age=60\r\n" if "cache" in q else ""
                answer(conn, name.encode(), "%d X" % mode, extra)
    except OSError:
        pass
    finally:
        if counted:
            with lock:
                st["open"] -= 1
        conn.close()


def listen(s, port, name):
    while True:
        conn, _ = s.accept()
        # Heads and bodies go in separate writes: no Nagle wait between them.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(conn, port, name), daemon=True).start()


# Every socket bound before any serves: a port taken meanwhile by another
# process ends this one (exit 1), and the spec starts it on other ports.
socks = []
for arg in sys.argv[1:]:
    p, n = arg.split(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(p)))
    except OSError as e:
        sys.stderr.write("bind %s: %s\n" % (p, e))
        sys.exit(1)
    s.listen(4096)
    state[int(p)] = {"accepts": 0, "requests": 0, "open": 0, "peak": 0, "mode": 200}
    socks.append((s, int(p), n))
threads = []
for s, p, n in socks:
    t = threading.Thread(target=listen, args=(s, p, n), daemon=True)
    t.start()
    threads.append(t)
for t in threads:
    t.join()
