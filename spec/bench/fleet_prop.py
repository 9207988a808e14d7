#!/usr/bin/env python3
"""fleet_prop.py: how long a change made on one ferry node takes to be
seen by the other nodes of a fleet, for spec/bench/fleet.sh.

  fleet_prop.py inventory N TAG POOL PROXY_PORT A_ADMIN OTHER_ADMIN...
      N times: POST /api/v1/proxies {"pool": POOL, "id": "TAG-i", "url":
      "http://TAG-i@127.0.0.1:PROXY_PORT"} to node A, then poll every
      other node's GET /api/v1/proxies/TAG-i until it answers 200.
  fleet_prop.py ban N EXCHANGE A_PROXY ORIGIN_PORT A_ADMIN OTHER_ADMIN...
      N times: GET http://127.0.0.1:ORIGIN_PORT/429 through node
      A's proxy listener (the exchange bans the proxy it went through),
      then poll every other node's console (POST /api/v1/console
      "exchange.list()") until its BANNED_NOW for EXCHANGE counts i bans
      more than it did before the first one.

The clock starts just before the change is sent to node A.  Polls go to
all the nodes still waiting at once (one keep-alive connection each, the
requests written first, the answers read after), so a node's time is when
the answer that first showed the change arrived: at most one poll round
late.  Each change is waited for at most 5 s per node; a node still
waiting then counts as missed.  Only 127.0.0.1 is dialled; every loop is
bounded.

Output, one line per figure (milliseconds):
  per_node n N p50 X p99 X max X missed N
  all_nodes n N p50 X p99 X max X
  change n N p50 X p99 X       (the POST's or the 429's own answer time)
  poll_round_ms X              (median time of one poll round)
"""
import json
import socket
import sys
import time

DEADLINE_S = 5.0


class Conn:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:port."""

    def __init__(self, port):
        self.port = port
        self.sock = None
        self.buf = b""

    def open(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send(self, method, target, body=None, host="127.0.0.1"):
        if self.sock is None:
            self.open()
        data = body.encode() if body is not None else b""
        head = "%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, target, host)
        if body is not None:
            head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
        try:
            self.sock.sendall(head.encode() + b"\r\n" + data)
        except OSError:
            self.close()
            self.open()
            self.sock.sendall(head.encode() + b"\r\n" + data)

    def read(self):
        """(status, body) of the next answer; (0, "") when the connection failed."""
        try:
            while b"\r\n\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise OSError("closed")
                self.buf += chunk
            head, rest = self.buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
            while len(rest) < length:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise OSError("closed")
                rest += chunk
            self.buf = rest[length:]
            return status, rest[:length].decode("utf-8", "replace")
        except (OSError, ValueError, IndexError):
            self.close()
            return 0, ""

    def close(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None
        self.buf = b""


def pct(values, p):
    if not values:
        return float("nan")
    s = sorted(values)
    i = min(len(s) - 1, max(0, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[i]


def banned_now(body, exchange):
    """BANNED_NOW of EXCHANGE in an exchange.list() answer, or None."""
    lines = body.splitlines()
    if not lines:
        return None
    cols = lines[0].split()
    if "BANNED_NOW" not in cols or "NAME" not in cols:
        return None
    ci, ni = cols.index("BANNED_NOW"), cols.index("NAME")
    for line in lines[1:]:
        f = line.split()
        if len(f) == len(cols) and f[ni] == exchange:
            try:
                return int(f[ci])
            except ValueError:
                return None
    return None


def main():
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode == "inventory":
        tag, pool, proxy_port = sys.argv[3], sys.argv[4], int(sys.argv[5])
    else:
        exchange, a_proxy, origin_port = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    a_admin = int(sys.argv[6])
    others = [Conn(int(p)) for p in sys.argv[7:]]
    a = Conn(a_admin)
    front = Conn(a_proxy) if mode == "ban" else None

    def poll_once(conns, i):
        """Ask every conn at once; the set of those that see change i."""
        for c in conns:
            if mode == "inventory":
                c.send("GET", "/api/v1/proxies/%s-%d" % (tag, i))
            else:
                c.send("POST", "/api/v1/console", "exchange.list()")
        seen = set()
        for c in conns:
            status, body = c.read()
            if mode == "inventory":
                if status == 200:
                    seen.add(c)
            elif status == 200:
                count = banned_now(body, exchange)
                if count is not None and count - base[c] >= i:
                    seen.add(c)
        return seen

    base = {}
    if mode == "ban":
        for c in others:
            c.send("POST", "/api/v1/console", "exchange.list()")
            status, body = c.read()
            count = banned_now(body, exchange) if status == 200 else None
            if count is None:
                print("error: node on port %d: no BANNED_NOW for %s (%d)" % (c.port, exchange, status))
                return 1
            base[c] = count

    per_node, all_nodes, change, rounds = [], [], [], []
    missed = 0
    for i in range(1, n + 1):
        t0 = time.monotonic()
        if mode == "inventory":
            body = json.dumps({"pool": pool, "id": "%s-%d" % (tag, i),
                               "url": "http://%s-%d@127.0.0.1:%d" % (tag, i, proxy_port)})
            a.send("POST", "/api/v1/proxies", body)
            status, answer = a.read()
            if status != 201:
                print("error: POST on node A answered %d: %s" % (status, answer.strip()[:200]))
                return 1
        else:
            front.send("GET", "http://127.0.0.1:%d/429" % origin_port,
                       host="127.0.0.1:%d" % origin_port)
            status, answer = front.read()
            if status != 429:
                print("error: the banning request answered %d: %s" % (status, answer.strip()[:200]))
                return 1
        change.append((time.monotonic() - t0) * 1000)
        waiting = set(others)
        last = t0
        while waiting and time.monotonic() - t0 < DEADLINE_S:
            r0 = time.monotonic()
            seen = poll_once(waiting, i)
            now = time.monotonic()
            rounds.append((now - r0) * 1000)
            for c in seen:
                per_node.append((now - t0) * 1000)
                last = now
            waiting -= seen
        missed += len(waiting)
        if not waiting:
            all_nodes.append((last - t0) * 1000)
        time.sleep(0.02)  # let the nodes settle between changes

    print("per_node n %d p50 %.2f p99 %.2f max %.2f missed %d" % (
        len(per_node), pct(per_node, 50), pct(per_node, 99),
        max(per_node) if per_node else float("nan"), missed))
    print("all_nodes n %d p50 %.2f p99 %.2f max %.2f" % (
        len(all_nodes), pct(all_nodes, 50), pct(all_nodes, 99),
        max(all_nodes) if all_nodes else float("nan")))
    print("change n %d p50 %.2f p99 %.2f" % (len(change), pct(change, 50), pct(change, 99)))
    print("poll_round_ms %.3f" % pct(rounds, 50))
    return 0


if __name__ == "__main__":
    sys.exit(main())
