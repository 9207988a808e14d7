#!/usr/bin/env python3
"""retry_backend.py PORT MODE NAME [PORT MODE NAME ...]: members for the
retry specs, one per PORT, all in one process.

It answers any request target (origin form as a backend, absolute form as
an HTTP proxy that answers itself), keep-alive, and records every request
it gets.  MODE:
  ok          200, body "NAME"
  status:N    status N, body "NAME N"
  reset       reads the request head (and its Content-Length body), then
              resets the connection (SO_LINGER 0) without a byte
  silent      reads the request and never answers
GET /__hits (origin form, asked directly) answers one line per request
received so far, "SECONDS METHOD TARGET", SECONDS on the system's
monotonic clock (one clock for every member) with microseconds; /__hits
itself is not recorded."""
import socket
import struct
import sys
import threading
import time

lock = threading.Lock()


def send(conn, status, body):
    data = body.encode()
    conn.sendall(("HTTP/1.1 %d X\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n"
                  % (status, len(data))).encode() + data)


def serve(conn, MODE, NAME, hits):
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
            method, target = lines[0].split(" ")[0], lines[0].split(" ")[1]
            length = 0
            for h in lines[1:]:
                k, _, v = h.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
            while len(data) < length:
                more = conn.recv(65536)
                if not more:
                    return
                data += more
            data = data[length:]
            if target == "/__hits":
                with lock:
                    text = "".join("%.6f %s %s\n" % h for h in hits)
                send(conn, 200, text)
                continue
            with lock:
                hits.append((time.monotonic(), method, target))
            if MODE == "ok":
                send(conn, 200, NAME)
            elif MODE.startswith("status:"):
                st = int(MODE.split(":")[1])
                send(conn, st, "%s %d" % (NAME, st))
            elif MODE == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            elif MODE == "silent":
                while conn.recv(65536):
                    pass
                return
    except OSError:
        pass
    finally:
        conn.close()


def listen(port, mode, name):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(512)
    hits = []
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn, mode, name, hits), daemon=True).start()


def main():
    args = sys.argv[1:]
    for i in range(0, len(args) - 2, 3):
        threading.Thread(target=listen, args=(int(args[i]), args[i + 1], args[i + 2]),
                         daemon=True).start()
    while True:
        time.sleep(3600)


main()
