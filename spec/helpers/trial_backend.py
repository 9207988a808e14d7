#!/usr/bin/env python3
"""trial_backend.py PORT LOGFILE: a raw-socket HTTP/1.1 backend that misbehaves on demand.

The request path picks the answer (see answer() below).  Every request head it
reads is appended to LOGFILE (request line, then each field line as received,
then a blank line), so a spec can prove what reached the backend: which
requests ran, and that no smuggling shape or hidden request did.  Keep-alive:
the connection serves requests until the client closes or an answer closes it.
"""
import hashlib
import socket
import struct
import sys
import threading
import time

PORT = int(sys.argv[1])
LOG = sys.argv[2]
LOCK = threading.Lock()
COUNTS = {}


def log(head):
    with LOCK:
        with open(LOG, "ab") as f:
            f.write(head + b"\r\n\r\n")


def read_head(conn, buf):
    while b"\r\n\r\n" not in buf:
        data = conn.recv(65536)
        if not data:
            return None, buf
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def field(head, name):
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return None


def read_body(conn, rest, head):
    """Body by Content-Length or chunked; returns (sha256 hex, length, leftover)."""
    h = hashlib.sha256()
    n = 0
    te = field(head, b"transfer-encoding")
    if te and b"chunked" in te.lower():
        buf = rest
        while True:
            while b"\r\n" not in buf:
                buf += conn.recv(65536)
            line, buf = buf.split(b"\r\n", 1)
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while b"\r\n" not in buf:
                    buf += conn.recv(65536)
                _, buf = buf.split(b"\r\n", 1)
                return h.hexdigest(), n, buf
            while len(buf) < size + 2:
                buf += conn.recv(65536)
            h.update(buf[:size])
            n += size
            buf = buf[size + 2:]
    cl = field(head, b"content-length")
    want = int(cl) if cl else 0
    buf = rest
    while n < want:
        if not buf:
            buf = conn.recv(min(1 << 20, want - n))
            if not buf:
                break
        take = buf[:want - n]
        h.update(take)
        n += len(take)
        buf = buf[len(take):]
    return h.hexdigest(), n, buf


def reply(conn, status, fields, body):
    head = "HTTP/1.1 %s\r\n" % status
    for k, v in fields:
        head += "%s: %s\r\n" % (k, v)
    conn.sendall(head.encode() + b"\r\n" + body)


def answer(conn, head, rest):
    line = head.split(b"\r\n")[0].decode("latin-1")
    method, target = line.split(" ")[0], line.split(" ")[1]
    path = target.split("?")[0]
    with LOCK:
        COUNTS[target] = COUNTS.get(target, 0) + 1
        count = COUNTS[target]
    digest, n, rest = read_body(conn, rest, head)
    if path == "/body":
        # The sha256 and length of the request body.
        b = ("%s %d\n" % (digest, n)).encode()
        reply(conn, "200 OK", [("Content-Length", len(b))], b)
    elif path.startswith("/big/"):
        # /big/N: N bytes of a repeating pattern, cacheable for 60 s.
        size = int(path[5:])
        reply(conn, "200 OK", [("Content-Length", size), ("Cache-Control", "max-age=60"),
                               ("ETag", '"big%d"' % size)], b"")
        chunk = (b"0123456789abcdef" * 4096)
        left = size
        while left > 0:
            conn.sendall(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
        if method == "HEAD":
            pass
    elif path.startswith("/drip/"):
        # /drip/N: N bytes in 8 pieces 0.25 s apart, cacheable for 60 s (a fill held open).
        size = int(path[6:])
        reply(conn, "200 OK", [("Content-Length", size), ("Cache-Control", "max-age=60")], b"")
        piece = size // 8
        for i in range(8):
            time.sleep(0.25)
            conn.sendall(b"d" * (piece if i < 7 else size - 7 * piece))
    elif path == "/count":
        b = ("count=%d\n" % count).encode()
        reply(conn, "200 OK", [("Content-Length", len(b)), ("Cache-Control", "max-age=60")], b)
    elif path == "/etag":
        inm = field(head, b"if-none-match")
        if inm == b'"v1"':
            reply(conn, "304 Not Modified", [("ETag", '"v1"'), ("Cache-Control", "max-age=0")], b"")
        else:
            reply(conn, "200 OK", [("Content-Length", 6), ("ETag", '"v1"'),
                                   ("Cache-Control", "max-age=0")], b"etag1\n")
    elif path == "/short":
        # Announces 100 bytes, sends 50, closes.
        reply(conn, "200 OK", [("Content-Length", 100), ("Cache-Control", "max-age=60")], b"s" * 50)
        return False
    elif path == "/long":
        # Announces 5 bytes, sends 5 plus a whole second response on the same connection.
        reply(conn, "200 OK", [("Content-Length", 5), ("Cache-Control", "max-age=60")],
              b"hello" + b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Injected: yes\r\n\r\nINJECTED")
    elif path == "/early":
        # A 103 Early Hints, then a cacheable 200.
        conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
        b = ("early count=%d\n" % count).encode()
        reply(conn, "200 OK", [("Content-Length", len(b)), ("Cache-Control", "max-age=60")], b)
    elif path == "/garbage":
        conn.sendall(b"lol what\r\n\r\n")
        return False
    elif path == "/varystar":
        b = ("vary count=%d\n" % count).encode()
        reply(conn, "200 OK", [("Content-Length", len(b)), ("Vary", "*"),
                               ("Cache-Control", "max-age=60")], b)
    elif path.startswith("/hugehdr/"):
        size = int(path[9:])
        reply(conn, "200 OK", [("Content-Length", 2), ("X-Huge", "h" * size)], b"ok")
    elif path == "/reset":
        # Announces 1 MB, sends 64 KiB, then resets.
        reply(conn, "200 OK", [("Content-Length", 1 << 20), ("Cache-Control", "max-age=60")],
              b"r" * 65536)
        time.sleep(0.1)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False
    elif path.startswith("/slow/"):
        time.sleep(float(path[6:]))
        reply(conn, "200 OK", [("Content-Length", 5)], b"slow\n")
    else:
        b = ("%d %s\n" % (PORT, target)).encode()
        reply(conn, "200 OK", [("Content-Length", len(b))], b if method != "HEAD" else b"")
    return True


def serve(conn):
    buf = b""
    try:
        while True:
            head, buf = read_head(conn, buf)
            if head is None:
                return
            log(head)
            if not answer(conn, head, buf):
                return
            buf = b""
    except (OSError, ValueError):
        pass
    finally:
        conn.close()


def main():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", PORT))
    s.listen(256)
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


main()
