#!/usr/bin/env python3
"""tls_origin.py PORT CERT KEY: an HTTPS/1.1 origin on 127.0.0.1 for the
TLS origination and interception specs (spec/helpers/tls_origin.lua).

Keep-alive on every answer; ALPN http/1.1.  Paths:
  GET  /ok?i=N            "ok-N"
  GET  /host              the Host header the origin received
  GET  /head              the request head as received (origin form?)
  GET  /bytes?n=N         N bytes of a fixed pattern (sha256 is the spec's)
  POST /echo              the request body back
  POST /sha               the sha256 (hex) of the request body
  GET  /status?code=N     an empty answer with that status (&ra=S: with Retry-After: S)
  GET  /stats             "connections=C requests=R": TLS connections accepted
  GET  /peer              the address:port the TLS connection came from
  GET  /once?code=N&key=K the first request of key K gets status N (no body), the
                          later ones 200 "ok-once"
  GET  /ws (Upgrade)      101, then every byte read is echoed back raw
"""
import hashlib
import socket
import ssl
import sys
import threading
from urllib.parse import parse_qs, urlsplit

PORT = int(sys.argv[1])
CERT, KEY = sys.argv[2], sys.argv[3]
lock = threading.Lock()
stats = {"connections": 0, "requests": 0}
onced = set()
PATTERN = bytes(range(256)) * 4096  # 1 MiB, repeated for larger bodies


def pattern(n):
    out = bytearray()
    while len(out) < n:
        out += PATTERN[: min(len(PATTERN), n - len(out))]
    return bytes(out)


def answer(conn, body, status="200 OK", ctype="text/plain"):
    conn.sendall(("HTTP/1.1 %s\r\nContent-Length: %d\r\nContent-Type: %s\r\n\r\n"
                  % (status, len(body), ctype)).encode() + body)


def read_body(conn, data, length, chunked):
    if not chunked:
        # A bytearray grows in place: bytes += bytes copies the whole body
        # on every read (seconds for an 8 MB upload in 16 KiB TLS records).
        buf = bytearray(data)
        while len(buf) < length:
            more = conn.recv(262144)
            if not more:
                raise EOFError
            buf += more
        return bytes(buf[:length]), bytes(buf[length:])
    body = b""
    while True:
        while b"\r\n" not in data:
            more = conn.recv(262144)
            if not more:
                raise EOFError
            data += more
        line, data = data.split(b"\r\n", 1)
        size = int(line.split(b";")[0], 16)
        while len(data) < size + 2:
            more = conn.recv(262144)
            if not more:
                raise EOFError
            data += more
        body += data[:size]
        data = data[size + 2:]
        if size == 0:
            return body, data


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
            text = head.decode("latin-1")
            lines = text.split("\r\n")
            method, target = lines[0].split(" ")[:2]
            hdr = {}
            for h in lines[1:]:
                k, _, v = h.partition(":")
                hdr[k.strip().lower()] = v.strip()
            with lock:
                stats["requests"] += 1
            chunked = "chunked" in hdr.get("transfer-encoding", "").lower()
            body, data = read_body(conn, data, int(hdr.get("content-length", "0")), chunked)
            u = urlsplit(target)
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            if u.path == "/ok":
                answer(conn, ("ok-%s" % q.get("i", "")).encode())
            elif u.path == "/host":
                answer(conn, hdr.get("host", "").encode())
            elif u.path == "/head":
                answer(conn, head)
            elif u.path == "/bytes":
                answer(conn, pattern(int(q.get("n", "0"))), ctype="application/octet-stream")
            elif u.path == "/echo":
                answer(conn, body, ctype="application/octet-stream")
            elif u.path == "/sha":
                answer(conn, hashlib.sha256(body).hexdigest().encode())
            elif u.path == "/status":
                code = int(q.get("code", "200"))
                ra = ("Retry-After: %s\r\n" % q["ra"]) if "ra" in q else ""
                conn.sendall(("HTTP/1.1 %d X\r\n%sContent-Length: 0\r\n\r\n"
                              % (code, ra)).encode())
            elif u.path == "/stats":
                with lock:
                    s = "connections=%d requests=%d" % (stats["connections"], stats["requests"])
                answer(conn, s.encode())
            elif u.path == "/once":
                # The first request of a key gets the status, the later ones 200.
                with lock:
                    first = q.get("key", "") not in onced
                    onced.add(q.get("key", ""))
                if first:
                    code = int(q.get("code", "429"))
                    conn.sendall(("HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % code).encode())
                else:
                    answer(conn, b"ok-once")
            elif u.path == "/peer":
                answer(conn, ("%s:%d" % conn.getpeername()[:2]).encode())
            elif u.path == "/ws" and "upgrade" in hdr.get("connection", "").lower():
                conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\n\r\n")
                if data:
                    conn.sendall(data)
                while True:
                    more = conn.recv(65536)
                    if not more:
                        return
                    conn.sendall(more)
            else:
                answer(conn, b"not found", "404 Not Found")
    except (OSError, EOFError, ValueError, ssl.SSLError):
        return
    finally:
        try:
            conn.close()
        except OSError:
            pass


def handshake(raw, ctx):
    try:
        raw.settimeout(30)
        conn = ctx.wrap_socket(raw, server_side=True)
        conn.settimeout(None)
    except (OSError, ssl.SSLError):
        raw.close()
        return
    with lock:
        stats["connections"] += 1
    serve(conn)


def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CERT, KEY)
    ctx.set_alpn_protocols(["http/1.1"])
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PORT))
    srv.listen(128)
    while True:
        raw, _ = srv.accept()
        threading.Thread(target=handshake, args=(raw, ctx), daemon=True).start()


main()
