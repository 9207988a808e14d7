#!/usr/bin/env python3
"""wss_client.py PROXY_PORT HOST PORT CAFILE N: a WebSocket client over wss
through an HTTP proxy, with the Python standard library only (for the
interception specs): CONNECT HOST:PORT, TLS verified against CAFILE with
SNI HOST, the RFC 6455 upgrade of GET /ws, then N text messages and one
binary message of 70 000 bytes (the 64-bit length form), each masked as a
client must; every echo is checked.  Prints one JSON line:
{"status":101,"echoed":N+1,"accept_ok":true} or {"error":...}."""
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_exact(sock, n):
    out = b""
    while len(out) < n:
        piece = sock.recv(n - len(out))
        if not piece:
            raise EOFError("closed after %d of %d bytes" % (len(out), n))
        out += piece
    return out


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(1)
        if not piece:
            raise EOFError("closed in the head")
        data += piece
    return data.decode("latin-1")


def send_frame(sock, opcode, payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(head + mask + body)


def recv_frame(sock):
    b0, b1 = read_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(sock, 8))[0]
    if b1 & 0x80:
        raise ValueError("a server frame must not be masked")
    return b0 & 0x0F, read_exact(sock, n)


def main():
    proxy_port, host, port, cafile, count = (int(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                                             sys.argv[4], int(sys.argv[5]))
    raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=20)
    raw.sendall(("CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host, port, host, port))
                .encode())
    head = read_head(raw)
    if " 200 " not in head.split("\r\n")[0] + " ":
        print(json.dumps({"error": "CONNECT: " + head.split("\r\n")[0]}))
        return 1
    ctx = ssl.create_default_context(cafile=cafile)
    sock = ctx.wrap_socket(raw, server_hostname=host)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: " + ("%s:%d" % (host, port)).encode() +
                 b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
                 b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = read_head(sock)
    status = int(head.split(" ")[1])
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    accept_ok = ("sec-websocket-accept: " + accept.lower()) in head.lower()
    if status != 101:
        print(json.dumps({"status": status}))
        return 1
    echoed = 0
    for i in range(count):
        msg = ("message %d through ferry" % i).encode()
        send_frame(sock, 1, msg)
        op, got = recv_frame(sock)
        if op == 1 and got == msg:
            echoed += 1
    big = bytes(range(256)) * 274  # 70 144 bytes
    send_frame(sock, 2, big)
    op, got = recv_frame(sock)
    if op == 2 and got == big:
        echoed += 1
    send_frame(sock, 8, struct.pack("!H", 1000))
    try:
        recv_frame(sock)
    except (EOFError, OSError, ValueError):
        pass
    print(json.dumps({"status": status, "echoed": echoed, "accept_ok": accept_ok}))
    return 0


try:
    sys.exit(main())
except (OSError, EOFError, ValueError, ssl.SSLError) as e:
    print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
    sys.exit(1)
