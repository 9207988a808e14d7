#!/usr/bin/env python3
"""intercept_client.py PROXY_PORT HOST PORT CAFILE PLAN: HTTPS requests
through ferry's CONNECT, over client TLS connections ferry intercepts
(http.client with a tunnel, trusting CAFILE).  PLAN is JSON: a list of
{"conn": K, "path": P, "headers": {...}, "sleep": S}; requests with the
same K share one client TLS connection (opened on first use), "sleep"
waits before the request.  Prints one JSON list, one entry a request:
{"status", "headers" (lower-case names), "body", "conn", "lport"} where
lport is the client socket's local port (the same port: the same
connection), or {"error"} when a request failed."""
import http.client
import json
import ssl
import sys
import time

pport, host, port, cafile, plan = (int(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                                   sys.argv[4], json.loads(sys.argv[5]))
ctx = ssl.create_default_context(cafile=cafile)
conns, out = {}, []
for step in plan:
    if step.get("sleep"):
        time.sleep(step["sleep"])
    k = step.get("conn", 0)
    try:
        if k not in conns:
            c = http.client.HTTPSConnection("127.0.0.1", pport, timeout=20, context=ctx)
            c.set_tunnel(host, port)
            c.connect()
            conns[k] = c
        c = conns[k]
        if c.sock is None:
            raise OSError("connection %s was closed" % k)
        lport = c.sock.getsockname()[1]
        c.request("GET", step["path"], headers=step.get("headers", {}))
        r = c.getresponse()
        body = r.read().decode("latin-1")
        out.append({"status": r.status, "body": body, "conn": k, "lport": lport,
                    "headers": {h.lower(): v for h, v in r.getheaders()}})
        if r.will_close:
            c.close()
    except (OSError, http.client.HTTPException) as e:
        out.append({"error": "%s: %s" % (type(e).__name__, e), "conn": k})
print(json.dumps(out))
