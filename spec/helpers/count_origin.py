#!/usr/bin/env python3
"""count_origin.py PORT: an HTTP/1.1 origin that counts its TCP connections.

Every answer is keep-alive (Content-Length, no Connection: close), and any
request target is served, absolute-form too, so the origin can also stand
in for a keep-alive HTTP upstream proxy.  A connection counts once its
first request is not a /count or /reset one (so asking does not count):
  GET /count          {"accepts":N,"open":N,"peak":N}: counted connections
                      accepted, open now, most open at once
  GET /reset          zero accepts and peak (open stays)
  GET /ok?i=N         "ok-N"
  GET /slow?s=S&i=N   "slow-N" after S seconds
  GET /close-after?linger=S  "closed", then the origin closes S seconds later"""
import json
import socket
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

PORT = int(sys.argv[1])
lock = threading.Lock()
state = {"accepts": 0, "open": 0, "peak": 0}


def answer(conn, body):
    conn.sendall(("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n"
                  % len(body)).encode() + body)


def serve(conn):
    data = b""
    counted = False
    first = True
    try:
        while True:
            while b"\r\n\r\n" not in data:
                more = conn.recv(65536)
                if not more:
                    return
                data += more
            head, data = data.split(b"\r\n\r\n", 1)
            target = head.decode("latin-1").split("\r\n")[0].split(" ")[1]
            u = urlsplit(target)
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            if first and u.path not in ("/count", "/reset"):
                counted = True
                with lock:
                    state["accepts"] += 1
                    state["open"] += 1
                    state["peak"] = max(state["peak"], state["open"])
            first = False
            if u.path == "/count":
                with lock:
                    answer(conn, json.dumps(state).encode())
            elif u.path == "/reset":
                with lock:
                    state["accepts"] = 0
                    state["peak"] = state["open"]
                answer(conn, b"reset")
            elif u.path == "/slow":
                time.sleep(float(q.get("s", "0.5")))
                answer(conn, ("slow-%s" % q.get("i", "")).encode())
            elif u.path == "/close-after":
                answer(conn, b"closed")
                time.sleep(float(q.get("linger", "0")))
                return
            else:
                answer(conn, ("ok-%s" % q.get("i", "")).encode())
    except OSError:
        pass
    finally:
        if counted:
            with lock:
                state["open"] -= 1
        conn.close()


def main():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PORT))
    srv.listen(512)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


main()
