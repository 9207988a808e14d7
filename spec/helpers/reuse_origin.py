#!/usr/bin/env python3
"""reuse_origin.py PORT: an HTTP/1.1 origin for kept-alive upstream specs.

Every answer says keep-alive (no Connection: close); the path decides what
follows it:
  GET  /ok?i=N                 "ok-N"; the connection stays open
  GET  /close-after?i=N&linger=S  "closed-N", then the origin closes S seconds
                               later (0: at once)
  GET  /drop-next?i=N          "armed-N"; the next request on that connection
                               is read and not answered: the origin closes
  POST /echo                   the request body back; the connection stays open
  GET  /late?mark=PATH&delay=S creates PATH when the request arrived, answers
                               "late-ok" S seconds later"""
import os
import socket
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

PORT = int(sys.argv[1])


def answer(conn, body, status="200 OK"):
    conn.sendall(("HTTP/1.1 %s\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n"
                  % (status, len(body))).encode() + body)


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
            method, target = lines[0].split(" ")[:2]
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
            body, data = data[:length], data[length:]
            u = urlsplit(target)
            q = {k: v[0] for k, v in parse_qs(u.query).items()}
            if u.path == "/ok":
                answer(conn, ("ok-%s" % q.get("i", "")).encode())
            elif u.path == "/close-after":
                answer(conn, ("closed-%s" % q.get("i", "")).encode())
                time.sleep(float(q.get("linger", "0")))
                return
            elif u.path == "/drop-next":
                answer(conn, ("armed-%s" % q.get("i", "")).encode())
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                return
            elif u.path == "/echo" and method == "POST":
                answer(conn, body)
            elif u.path == "/late":
                with open(q["mark"], "w") as f:
                    f.write("arrived\n")
                time.sleep(float(q.get("delay", "0.3")))
                answer(conn, b"late-ok")
            else:
                answer(conn, b"not found", "404 Not Found")
    except OSError:
        pass
    finally:
        conn.close()


def main():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", PORT))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
