#!/usr/bin/env python3
"""socks4_server.py PORT MODE: a SOCKS4/4a server for the specs, 127.0.0.1 only.

MODE relay: CONNECT requests (SOCKS4 addresses and SOCKS4a names) are
connected and relayed, one thread per direction; each request is logged
on stdout as "REQUEST user=<id> host=<name or address> port=<n>", so a
spec can tell what the client sent.  A destination that refuses gets
reply 91.  MODE garbage: every request is answered with a reply whose
version byte is 5, then closed.
"""
import socket
import sys
import threading


def read_exact(c, n):
    b = b""
    while len(b) < n:
        part = c.recv(n - len(b))
        if not part:
            raise EOFError
        b += part
    return b


def read_cstr(c, limit=1024):
    b = b""
    while True:
        ch = read_exact(c, 1)
        if ch == b"\0":
            return b.decode("latin-1")
        b += ch
        if len(b) > limit:
            raise EOFError


def pump(src, dst):
    try:
        while True:
            d = src.recv(65536)
            if not d:
                break
            dst.sendall(d)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def serve(c, mode):
    try:
        head = read_exact(c, 8)
        user = read_cstr(c)
        port = int.from_bytes(head[2:4], "big")
        ip = head[4:8]
        if ip[:3] == b"\0\0\0" and ip[3] != 0:
            host = read_cstr(c)
        else:
            host = socket.inet_ntoa(ip)
        print("REQUEST user=%s host=%s port=%d" % (user, host, port), flush=True)
        if mode == "garbage":
            c.sendall(b"\5\x5a\0\0\0\0\0\0")
            c.close()
            return
        if head[0] != 4 or head[1] != 1:
            c.sendall(b"\0\x5b\0\0\0\0\0\0")
            c.close()
            return
        try:
            up = socket.create_connection((host, port), timeout=5)
            up.settimeout(None)
        except OSError:
            c.sendall(b"\0\x5b\0\0\0\0\0\0")
            c.close()
            return
        c.sendall(b"\0\x5a\0\0\0\0\0\0")
        t = threading.Thread(target=pump, args=(up, c), daemon=True)
        t.start()
        pump(c, up)
        t.join()
        up.close()
        c.close()
    except (EOFError, OSError):
        c.close()


def main():
    port, mode = int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "relay"
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c, mode), daemon=True).start()


if __name__ == "__main__":
    main()
