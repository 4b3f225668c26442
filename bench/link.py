"""A modeled edge link on loopback, for bench/start.sh: a TCP proxy on 127.0.0.1 in front of a
registry whose two directions each carry at most RATE bits per second (one shared bucket per
direction, as one link is shared by all the node's connections) and add half the round-trip
time, so that a node's pulls (and a lazy node's range requests) pay what a node behind such a
link pays: the bytes over the rate, and the latency per request.

    python3 bench/link.py --port P --upstream 127.0.0.1:R --rate 100mbit --rtt 20ms --stats F

What it does not model: TCP's own reaction to the delay (the proxy's loopback legs ACK at
once; at 100 Mbit/s and 20 ms the bandwidth-delay product, 250 kB, fits default windows) and
loss. The stats file (JSON {"down": bytes registry → node, "up": bytes node → registry,
"connections": n}) is rewritten every 0.2 s; `--reset` is not needed: readers take differences.
Prints "ready" once listening. Only 127.0.0.1 is ever connected to.
"""
import argparse
import asyncio
import json
import os
import re
import time

UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}
CHUNK = 64 << 10
AHEAD = 0.05


def rate_bytes(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", text.lower())
    if not m:
        raise SystemExit(f"--rate {text!r}: use e.g. 100mbit")
    return float(m[1]) * UNITS[m[2]] / 8


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", text)
    if not m:
        raise SystemExit(f"--rtt {text!r}: use e.g. 20ms")
    return float(m[1]) / (1000 if m[2] == "ms" else 1)


class Bucket:
    """Serialization on a link of `rate` bytes/s: each chunk leaves when the link is free."""

    def __init__(self, rate: float):
        self.rate, self.free_at = rate, 0.0
        self.lock = asyncio.Lock()

    async def send(self, n: int) -> float:
        """When the chunk has left the link (the link's own clock). The reader runs at most
        AHEAD seconds in front of it, which bounds what waits in memory; sleeping for every
        chunk instead would add the event loop's overshoot to each one."""
        async with self.lock:
            start = max(time.monotonic(), self.free_at)
            self.free_at = start + n / self.rate
            done = self.free_at
        ahead = done - time.monotonic()
        if ahead > AHEAD:
            await asyncio.sleep(ahead - AHEAD)
        return done


async def pump(reader, writer, bucket, delay, stats, key):
    """Reads, serializes on the link, delivers `delay` later, in order."""
    queue: asyncio.Queue = asyncio.Queue()

    async def deliver():
        while True:
            item = await queue.get()
            if item is None:
                break
            at, data = item
            wait = at - time.monotonic()
            if wait > 0.001:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
            stats[key] += len(data)
        writer.close()

    task = asyncio.create_task(deliver())
    try:
        while data := await reader.read(CHUNK):
            sent = await bucket.send(len(data))
            await queue.put((sent + delay, data))
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        await queue.put(None)
        try:
            await task
        except ConnectionError:
            pass


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="127.0.0.1:PORT of the registry")
    p.add_argument("--rate", default="100mbit")
    p.add_argument("--rtt", default="20ms")
    p.add_argument("--stats", required=True)
    a = p.parse_args()
    host, port = a.upstream.rsplit(":", 1)
    if host not in ("127.0.0.1", "localhost"):
        raise SystemExit("--upstream must be on 127.0.0.1")
    rate, delay = rate_bytes(a.rate), seconds(a.rtt) / 2
    down, up = Bucket(rate), Bucket(rate)
    stats = {"down": 0, "up": 0, "connections": 0}

    async def handle(client_r, client_w):
        stats["connections"] += 1
        try:
            server_r, server_w = await asyncio.open_connection(host, int(port))
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            pump(client_r, server_w, up, delay, stats, "up"),
            pump(server_r, client_w, down, delay, stats, "down"),
        )

    async def write_stats():
        while True:
            with open(a.stats + ".tmp", "w") as f:
                json.dump(stats, f)
            os.replace(a.stats + ".tmp", a.stats)
            await asyncio.sleep(0.2)

    server = await asyncio.start_server(handle, "127.0.0.1", a.port)
    asyncio.create_task(write_stats())
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
