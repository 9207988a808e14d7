#!/usr/bin/env python3
"""lb_member.py PORT:NAME...: pool members for load-balancing specs, one per
PORT:NAME, all in one process (a Python start is slow on a busy machine).

It answers any request target (origin form, or absolute form like an HTTP
proxy that serves everything itself), keep-alive, so it stands in for a
backend and for an HTTP proxy alike.  Control targets (never counted):
  /_count            {"n": N}: requests counted since the last reset
  /_reset            zero the count
  /_health?status=S  the status the health path answers from now on
Health: the path /health answers the status set (200 at start), with
the body NAME; it is not counted.  Every other request is counted and
answered 200 with the body NAME."""
import json
import socket
import sys
import threading
from urllib.parse import parse_qs, urlsplit

lock = threading.Lock()


def answer(conn, status, body):
    conn.sendall(("HTTP/1.1 %d X\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n"
                  % (status, len(body))).encode() + body)


def serve(conn, NAME, state):
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
            u = urlsplit(lines[0].split(" ")[1])
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            if u.path == "/_count":
                with lock:
                    answer(conn, 200, json.dumps(state).encode())
            elif u.path == "/_reset":
                with lock:
                    state["n"] = 0
                answer(conn, 200, b"reset")
            elif u.path == "/_health":
                with lock:
                    state["health"] = int(q.get("status", "200"))
                answer(conn, 200, b"set")
            elif u.path == "/health":
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    if k.strip().lower() == "host":
                        state["host"] = v.strip()
                answer(conn, state["health"], NAME)
            else:
                with lock:
                    state["n"] += 1
                answer(conn, 200, NAME)
    except OSError:
        pass
    finally:
        conn.close()


def accept_loop(srv, name):
    state = {"n": 0, "health": 200, "host": ""}
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn, name, state), daemon=True).start()


def main():
    loops = []
    for arg in sys.argv[1:]:
        port, name = arg.split(":", 1)
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", int(port)))
        srv.listen(128)
        loops.append(threading.Thread(target=accept_loop, args=(srv, name.encode()),
                                      daemon=True))
    for t in loops:
        t.start()
    for t in loops:
        t.join()


if __name__ == "__main__":
    main()
