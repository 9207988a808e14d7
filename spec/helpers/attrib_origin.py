#!/usr/bin/env python3
"""An origin that answers badly on purpose, for failure attribution specs.

Usage: attrib_origin.py PORT

Paths (any method; each answer ends with the connection closed):
  /big-head        200 with a 20 000-byte Set-Cookie (head over 16 KiB)
  /many-fields     200 with 120 header fields (over 100)
  /chunked-small   HTTP/1.1 200, Transfer-Encoding: chunked, body "hello"
  /chunked-big     HTTP/1.1 200, chunked, BIG_LINES lines "%08d\\n" in chunks
                   of varied sizes (1 .. 70 000 bytes), with a trailer field
  /hits?PATH       text: how many requests PATH got so far
A CONNECT request gets "502 Bad Gateway" (as an HTTP proxy that could not
reach the target would answer).
"""
import socket
import sys
import threading

BIG_LINES = 116509  # 1 048 581 bytes
SIZES = [1, 7, 4096, 70000, 3, 16384, 65535, 999, 12345]

hits = {}
lock = threading.Lock()


def big_body():
    return "".join("%08d\n" % i for i in range(BIG_LINES)).encode()


def chunked(data):
    out, i, k = [], 0, 0
    while i < len(data):
        n = SIZES[k % len(SIZES)]
        k += 1
        part = data[i:i + n]
        i += n
        out.append(b"%x\r\n" % len(part) + part + b"\r\n")
    out.append(b"0\r\nX-Trailer: done\r\n\r\n")
    return b"".join(out)


def read_head(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        got = conn.recv(65536)
        if not got:
            return None
        data += got
        if len(data) > 65536:
            return None
    return data.split(b"\r\n\r\n", 1)[0].decode("latin-1")


def answer(conn):
    head = read_head(conn)
    if head is None:
        return
    line = head.split("\r\n", 1)[0]
    parts = line.split(" ")
    if len(parts) < 3:
        return
    method, target = parts[0], parts[1]
    if method == "CONNECT":
        conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        return
    path = target
    if "://" in path:
        rest = path.split("://", 1)[1]
        path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    with lock:
        hits[path] = hits.get(path, 0) + 1
    if path == "/big-head":
        conn.sendall(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=" + b"x" * 20000 +
                     b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    elif path == "/many-fields":
        fields = b"".join(b"X-F%d: v\r\n" % i for i in range(120))
        conn.sendall(b"HTTP/1.1 200 OK\r\n" + fields +
                     b"Content-Length: 2\r\nConnection: close\r\n\r\nok")
    elif path == "/chunked-small":
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n")
    elif path == "/chunked-big":
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: text/plain\r\n\r\n" + chunked(big_body()))
    elif path.startswith("/hits?"):
        with lock:
            n = hits.get(path[len("/hits?"):], 0)
        body = b"%d" % n
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                     % len(body) + body)
    else:
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")


def serve(conn):
    try:
        conn.settimeout(30)
        answer(conn)
    except OSError:
        pass
    finally:
        conn.close()


def main():
    port = int(sys.argv[1])
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(64)
    while True:
        conn, _ = ls.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
