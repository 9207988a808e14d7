#!/usr/bin/env python3
"""requests_client.py PROXY_URL BASE N: Python requests through a proxy
(for the interception specs): one Session, so its N GETs of BASE/peer and
one POST of 1 MiB to BASE/sha share one tunnel and one TLS connection.
The CA to trust comes from REQUESTS_CA_BUNDLE, as users set it.  Prints
one JSON line: {"statuses":[...],"peers":[...],"sha_ok":true} or
{"error":...}."""
import hashlib
import json
import os
import sys

import requests

proxy, base, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    s = requests.Session()
    s.proxies = {"https": proxy, "http": proxy}
    statuses, peers = [], []
    for i in range(n):
        r = s.get("%s/peer?node=%d" % (base, i), timeout=20)
        statuses.append(r.status_code)
        peers.append(r.text)
    big = os.urandom(1 << 20)
    r = s.post(base + "/sha", data=big, timeout=20)
    statuses.append(r.status_code)
    print(json.dumps({"statuses": statuses, "peers": peers,
                      "sha_ok": r.text == hashlib.sha256(big).hexdigest()}))
except requests.RequestException as e:
    print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
    sys.exit(1)
