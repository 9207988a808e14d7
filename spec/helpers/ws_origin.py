#!/usr/bin/env python3
"""ws_origin.py PORT: a minimal WebSocket echo origin (RFC 6455) for the
client specs (spec/integration/24_clients_spec.lua).

GET with `Upgrade: websocket` and a Sec-WebSocket-Key gets 101 and then
every text or binary message is echoed back unmasked; a close frame is
answered with a close frame.  Any other request gets 426 with a short
body.  One thread per connection, 127.0.0.1 only.
"""
import base64
import hashlib
import socket
import struct
import sys
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_exact(sock, n):
    out = b""
    while len(out) < n:
        piece = sock.recv(n - len(out))
        if not piece:
            raise EOFError
        out += piece
    return out


def read_head(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        piece = sock.recv(4096)
        if not piece:
            raise EOFError
        buf += piece
        if len(buf) > 65536:
            raise ValueError("head too long")
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        fields[k.strip().lower()] = v.strip()
    return lines[0], fields, rest


class Reader:
    def __init__(self, sock, rest):
        self.sock, self.buf = sock, rest

    def take(self, n):
        while len(self.buf) < n:
            piece = self.sock.recv(65536)
            if not piece:
                raise EOFError
            self.buf += piece
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def frame(opcode, payload):
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        hdr = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        hdr = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return hdr + payload


def serve(sock):
    try:
        line, fields, rest = read_head(sock)
        if fields.get("upgrade", "").lower() != "websocket" or "sec-websocket-key" not in fields:
            body = b"websocket only\n"
            sock.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))
            return
        accept = base64.b64encode(hashlib.sha1(fields["sec-websocket-key"].encode() + GUID)
                                  .digest())
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept +
                     b"\r\nX-Ws-Request-Line: " + line.encode("latin-1") + b"\r\n\r\n")
        rd = Reader(sock, rest)
        while True:
            b0, b1 = rd.take(2)
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", rd.take(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", rd.take(8))[0]
            mask = rd.take(4) if b1 & 0x80 else b"\0\0\0\0"
            data = bytearray(rd.take(n))
            for i in range(n):
                data[i] ^= mask[i % 4]
            if opcode == 8:
                sock.sendall(frame(8, bytes(data[:2])))
                return
            if opcode in (1, 2):
                sock.sendall(frame(opcode, bytes(data)))
            elif opcode == 9:
                sock.sendall(frame(10, bytes(data)))
    except (EOFError, OSError, ValueError):
        pass
    finally:
        sock.close()


def main():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(sys.argv[1])))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
