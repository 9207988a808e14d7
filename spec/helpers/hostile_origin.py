#!/usr/bin/env python3
"""hostile_origin.py PORT: an origin that answers raw, malformed responses.

The request path names the answer (ANSWERS below); the bytes are sent as
they are, then the connection is closed.  Used to prove that ferry never
relays a response head or chunked body that the next reader could split
differently."""
import socket
import sys
import threading

PORT = int(sys.argv[1])

ANSWERS = {
    "/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    # A bare CR inside the head: a lax parser ends the head early.
    "/bare-cr": b"HTTP/1.1 200 OK\r\nX-A: 1\rContent-Length: 5\r\n\r\nhello",
    "/bare-cr-end": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\r\nhello",
    "/space-colon": b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
    "/obs-fold-first": b"HTTP/1.1 200 OK\r\n Content-Length: 5\r\nX: y\r\n\r\nhello",
    "/ctl-value": b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 5\r\n\r\nhello",
    "/te-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n0\r\n\r\n",
    "/cl-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "/cl-sign": b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    "/te-10": b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "/status-bad": b"HTTP/1.1 2OO OK\r\nContent-Length: 5\r\n\r\nhello",
    # Chunked bodies that bend the framing after the head is out.
    "/chunk-no-crlf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhelloXX0\r\n\r\nGARBAGE-AFTER",
    "/chunk-ext-lf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5;a\nb\r\nhello\r\n0\r\n\r\nGARBAGE-AFTER",
    "/chunk-size-lf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\nhello\r\n0\r\n\r\nGARBAGE-AFTER",
    "/chunk-overflow": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"10000000000000005\r\nhello\r\n0\r\n\r\nGARBAGE-AFTER",
    "/trailer-bare-cr": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n0\r\nX-T: a\rGARBAGE-AFTER\r\n\r\n",
    "/chunked-good": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                     b"5;ext=1\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n",
    # RFC 9112 6.3: a coding other than chunked last: read until close.
    "/te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nuntil-close",
    "/continue-then-ok": b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
                         b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "/hints-then-ok": b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                      b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
}


def serve(conn):
    try:
        data = b""
        while b"\r\n\r\n" not in data and b"\n\n" not in data:
            more = conn.recv(65536)
            if not more:
                return
            data += more
        parts = data.split(b" ", 2)
        path = parts[1].decode("latin-1") if len(parts) > 1 else "/"
        if "://" in path:
            path = "/" + path.split("://", 1)[1].split("/", 1)[-1]
        conn.sendall(ANSWERS.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
    finally:
        conn.close()


srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", PORT))
srv.listen(64)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
