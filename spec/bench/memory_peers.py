#!/usr/bin/env python3
"""memory_peers.py: the origin and the clients of spec/bench/memory.sh.

  memory_peers.py origin PORT
      an HTTP/1.1 keep-alive origin on 127.0.0.1: GET /?n=N answers N bytes.
  memory_peers.py clients PROXY_PORT ORIGIN_PORT N SIZE
      opens N connections to ferry (at most 500 connecting at once), sends
      one GET of SIZE bytes on each, reads the answer, keeps the
      connection open and prints "ready"; closes all of them when a line
      (or EOF) arrives on stdin, then prints "closed".
"""
import asyncio
import sys


async def origin(port):
    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                target = line.split(" ")[1]
                n = int(target.split("n=")[1]) if "n=" in target else 2
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
                writer.write(b"x" * n)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096)
    async with srv:
        await srv.serve_forever()


async def one(proxy_port, origin_port, size, gate):
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        writer.write(("GET http://127.0.0.1:%d/?n=%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
                      % (origin_port, size, origin_port)).encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode("latin-1"))
        await reader.readexactly(size)
        return writer


async def clients(proxy_port, origin_port, n, size):
    gate = asyncio.Semaphore(500)
    writers = await asyncio.gather(*(one(proxy_port, origin_port, size, gate)
                                     for _ in range(n)))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for w in writers:
        w.close()
    await asyncio.sleep(0.2)
    print("closed", flush=True)


def main():
    if sys.argv[1] == "origin":
        asyncio.run(origin(int(sys.argv[2])))
    else:
        asyncio.run(clients(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                            int(sys.argv[5])))


if __name__ == "__main__":
    main()
