#!/usr/bin/env python3
"""relay_origin.py PORT: the origin of the relay matrix (spec/integration/17_relay_spec.lua).

A threaded HTTP/1.1 server, one thread per connection, on 127.0.0.1, with
small socket buffers so that a few hundred KiB of body already push back
on ferry (the stalls the matrix hunts need full buffers on both sides).

  GET  /gen?n=N&framing=cl|chunked|close[&rate=BPS][&stall_after=K]
       N deterministic bytes; X-Body-Sha256 carries their sha256.  With
       stall_after, the body stops after K bytes and the connection
       stays open, silent.
  POST /sink[?rate=BPS][&delay=S]
       reads the request body (Content-Length or chunked), at most BPS
       bytes/s when rate is set; waits S seconds, then answers
       {"len":N,"sha256":"..."}.
  POST /echo?framing=cl|chunked|close
       streams the request body back as it arrives (framing cl needs a
       Content-Length request; a chunked one is read whole first).
  GET  /conns
       {"open":N,"total":N}: connections open now and ever accepted.

Each answer carries X-Origin-Conn, the connection's serial number.
Keep-alive is honoured for framings cl and chunked.
"""
import hashlib
import json
import socket
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

BUF = 16384
BLOCK_LEN = 65521  # prime: a block relayed out of place changes the digest
_block = bytes((i * 2654435761 >> 13) & 0xFF for i in range(BLOCK_LEN))
_sums = {}
_lock = threading.Lock()
_open = 0
_total = 0


def gen_bytes(off, n):
    """n bytes of the stream from offset off."""
    out = bytearray()
    while n > 0:
        i = off % BLOCK_LEN
        k = min(n, BLOCK_LEN - i)
        out += _block[i:i + k]
        off += k
        n -= k
    return bytes(out)


def gen_sum(n):
    with _lock:
        if n in _sums:
            return _sums[n]
    h = hashlib.sha256()
    off = 0
    while off < n:
        k = min(1 << 20, n - off)
        h.update(gen_bytes(off, k))
        off += k
    with _lock:
        _sums[n] = h.hexdigest()
    return _sums[n]


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def fill(self, limit=BUF):
        data = self.sock.recv(limit)
        if not data:
            raise EOFError
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            if len(self.buf) > 65536:
                raise ValueError("line too long")
            self.fill()
        i = self.buf.index(b"\r\n")
        ln, self.buf = self.buf[:i], self.buf[i + 2:]
        return ln.decode("latin-1")

    def take(self, n, pace):
        """Up to n body bytes (at least 1)."""
        if not self.buf:
            self.fill(min(n, BUF))
        out, self.buf = self.buf[:n], self.buf[n:]
        pace(len(out))
        return out


class Pacer:
    """Holds a byte stream to `rate` bytes/s (no pacing when rate is 0)."""

    def __init__(self, rate):
        self.rate = rate
        self.start = time.monotonic()
        self.done = 0

    def __call__(self, n):
        if self.rate <= 0:
            return
        self.done += n
        ahead = self.done / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


def body_pieces(conn, head, pace):
    """Yield the request body in pieces as they arrive."""
    if head.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int(conn.line().split(";")[0].strip(), 16)
            if size == 0:
                while conn.line() != "":
                    pass
                return
            left = size
            while left > 0:
                piece = conn.take(min(left, BUF), pace)
                left -= len(piece)
                yield piece
            if conn.line() != "":
                raise ValueError("bad chunk end")
    else:
        left = int(head.get("content-length", "0"))
        while left > 0:
            piece = conn.take(min(left, BUF), pace)
            left -= len(piece)
            yield piece


def send_head(sock, status, fields, framing, length, serial):
    lines = ["HTTP/1.1 " + status, "X-Origin-Conn: %d" % serial]
    for k, v in fields.items():
        lines.append("%s: %s" % (k, v))
    if framing == "cl":
        lines.append("Content-Length: %d" % length)
    elif framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append("Connection: close")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def send_piece(sock, framing, data):
    if not data:
        return
    if framing == "chunked":
        sock.sendall(b"%x\r\n" % len(data) + data + b"\r\n")
    else:
        sock.sendall(data)


def send_end(sock, framing):
    if framing == "chunked":
        sock.sendall(b"0\r\n\r\n")


def answer(conn, serial, method, target, head):
    url = urlsplit(target)
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    framing = q.get("framing", "cl")
    rate = int(q.get("rate", "0"))
    sock = conn.sock
    if head.get("expect", "").lower() == "100-continue":
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if url.path == "/gen":
        n = int(q["n"])
        send_head(sock, "200 OK", {"X-Body-Sha256": gen_sum(n)}, framing, n, serial)
        pace = Pacer(rate)
        stall = int(q.get("stall_after", "-1"))
        off = 0
        while off < n:
            if 0 <= stall <= off:
                time.sleep(3600)
            k = min(BUF, n - off, stall - off if stall > off else BUF)
            send_piece(sock, framing, gen_bytes(off, k))
            pace(k)
            off += k
        send_end(sock, framing)
    elif url.path == "/sink":
        h, n = hashlib.sha256(), 0
        for piece in body_pieces(conn, head, Pacer(rate)):
            h.update(piece)
            n += len(piece)
        time.sleep(float(q.get("delay", "0")))
        body = json.dumps({"len": n, "sha256": h.hexdigest()}).encode()
        send_head(sock, "200 OK", {}, "cl", len(body), serial)
        sock.sendall(body)
    elif url.path == "/echo":
        chunked_in = head.get("transfer-encoding", "").lower() == "chunked"
        if framing == "cl" and chunked_in:
            data = b"".join(body_pieces(conn, head, Pacer(rate)))
            send_head(sock, "200 OK", {}, "cl", len(data), serial)
            sock.sendall(data)
        else:
            n = int(head.get("content-length", "0"))
            send_head(sock, "200 OK", {}, framing, n, serial)
            for piece in body_pieces(conn, head, Pacer(rate)):
                send_piece(sock, framing, piece)
            send_end(sock, framing)
    elif url.path == "/conns":
        with _lock:
            body = json.dumps({"open": _open, "total": _total}).encode()
        send_head(sock, "200 OK", {}, "cl", len(body), serial)
        sock.sendall(body)
    else:
        for _ in body_pieces(conn, head, Pacer(0)):
            pass
        send_head(sock, "404 Not Found", {}, "cl", 0, serial)
        return False
    return framing != "close"


def serve(sock, serial):
    global _open
    conn = Conn(sock)
    try:
        while True:
            line = conn.line()
            if line == "":
                continue
            method, target, _ = line.split(" ", 2)
            head = {}
            while True:
                ln = conn.line()
                if ln == "":
                    break
                k, v = ln.split(":", 1)
                head[k.strip().lower()] = v.strip()
            keep = answer(conn, serial, method, target, head)
            if not keep or head.get("connection", "").lower() == "close":
                break
    except (EOFError, OSError, ValueError):
        pass
    finally:
        with _lock:
            _open -= 1
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        sock.close()


def main():
    global _open, _total
    port = int(sys.argv[1])
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Small buffers on accepted sockets: backpressure reaches ferry early.
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    srv.bind(("127.0.0.1", port))
    srv.listen(128)
    while True:
        sock, _ = srv.accept()
        with _lock:
            _open += 1
            _total += 1
            serial = _total
        threading.Thread(target=serve, args=(sock, serial), daemon=True).start()


if __name__ == "__main__":
    main()
