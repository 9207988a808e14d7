#!/usr/bin/env python3
"""socks_client.py KIND PROXY_PORT TARGET_HOST TARGET_PORT PATH [USER PASS]

A SOCKS client built on python3-socks (PySocks): KIND is socks5, socks5h
(the proxy resolves the name), socks4 or socks4a.  Sends one HTTP/1.1 GET
for PATH through 127.0.0.1:PROXY_PORT, reads the answer to its
Content-Length or the close, and prints one line:

    STATUS LENGTH SHA256_OF_BODY X_BODY_SHA256_OR_-

or "ERROR <message>" when the proxy refuses (exit 1).
"""
import hashlib
import sys

import socks

KINDS = {
    "socks5": (socks.SOCKS5, False),
    "socks5h": (socks.SOCKS5, True),
    "socks4": (socks.SOCKS4, False),
    "socks4a": (socks.SOCKS4, True),
}


def main():
    kind, pport, host, tport, path = sys.argv[1:6]
    user = sys.argv[6] if len(sys.argv) > 6 else None
    pw = sys.argv[7] if len(sys.argv) > 7 else None
    ptype, rdns = KINDS[kind]
    s = socks.socksocket()
    s.settimeout(20)
    s.set_proxy(ptype, "127.0.0.1", int(pport), rdns=rdns, username=user, password=pw)
    try:
        s.connect((host, int(tport)))
    except socks.ProxyError as e:
        print("ERROR " + str(e).replace("\n", " "))
        sys.exit(1)
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n"
               % (path, host, tport)).encode())
    data = bytearray()
    length = None
    while length is None or len(data) < length:
        b = s.recv(65536)
        if not b:
            break
        data += b
        end = data.find(b"\r\n\r\n")
        if length is None and end >= 0:
            for line in data[:end].decode("latin-1").split("\r\n")[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = end + 4 + int(v)
    s.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ")[1] if lines and " " in lines[0] else "0"
    want = "-"
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "x-body-sha256":
            want = v.strip()
    print("%s %d %s %s" % (status, len(body), hashlib.sha256(body).hexdigest(), want))


if __name__ == "__main__":
    main()
