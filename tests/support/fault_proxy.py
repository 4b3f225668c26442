"""A fault-injecting HTTP proxy for registry tests: sits on 127.0.0.1 in front of a real
registry and, at random, answers instead of it or breaks the connection the way flaky edge
networks do.

    python3 fault_proxy.py --port P --upstream 127.0.0.1:5000 --stats stats.json \
        [--rate 429=0.15 --rate reset=0.1 ...] [--first 503] [--seed N]

Fault kinds (at most one per request, each with its own probability):
  429    answer 429 with Retry-After: 1, without asking the registry
  503    answer 503, without asking the registry
  reset  forward the request (the registry acts on it), then reset the connection instead of
         answering: the client cannot know whether it happened
  cut    read part of the request body, then reset the connection (an upload cut mid-body)
  stall  wait 2 s, then forward
  all    answer 503 to every request (a registry that is down)
--first KIND injects KIND on the very first request only; --after N injects nothing before
request N+1; --only REGEX injects only into requests whose "METHOD PATH" it matches. The stats file (JSON: requests,
injected per kind) is rewritten after every request. Prints "ready" once listening.
"""
import argparse
import re
import http.client
import http.server
import json
import os
import random
import socket
import struct
import threading
import time

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}

class Faults:
    def __init__(self, rates, first, after, seed, stats_path, only=None):
        self.only = re.compile(only) if only else None
        self.rates = rates
        self.after = after
        self.first = first
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.injected = {}
        self.stats_path = stats_path

    def pick(self, request):
        with self.lock:
            self.requests += 1
            kind = None
            if self.only and not self.only.search(request):
                pass
            elif self.requests == 1 and self.first:
                kind = self.first
            elif self.requests <= self.after:
                pass
            elif "all" in self.rates:
                kind = "503"
            else:
                for k, p in self.rates.items():
                    if self.rng.random() < p:
                        kind = k
                        break
            if kind:
                self.injected[kind] = self.injected.get(kind, 0) + 1
            with open(self.stats_path + ".tmp", "w") as f:
                json.dump({"requests": self.requests, "injected": self.injected}, f)

            os.replace(self.stats_path + ".tmp", self.stats_path)
            return kind

def make_handler(upstream, faults):
    host, port = upstream.rsplit(":", 1)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reset(self):
            # SO_LINGER 0: close() sends RST, as a dropped connection on the way would.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            try:
                self.connection.close()
            except OSError:
                pass

        def read_body(self, limit=None):
            n = int(self.headers.get("Content-Length") or 0)
            if limit is not None:
                n = min(n, limit)
            out = bytearray()
            while len(out) < n:
                chunk = self.rfile.read(min(1 << 20, n - len(out)))
                if not chunk:
                    break
                out += chunk
            return bytes(out)

        def answer(self, status, extra=()):
            body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "injected fault"}]}).encode()
            self.send_response(status)
            for k, v in extra:
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def handle_any(self):
            kind = faults.pick(f"{self.command} {self.path}")
            length = int(self.headers.get("Content-Length") or 0)
            if kind == "cut" and length > 1:
                self.read_body(limit=length // 2)
                return self.reset()
            body = self.read_body()
            if kind in ("429", "503"):
                return self.answer(int(kind), [("Retry-After", "1")] if kind == "429" else [])
            if kind == "stall":
                time.sleep(2)
            conn = http.client.HTTPConnection(host, int(port), timeout=300)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
            conn.request(self.command, self.path, body=body if (body or length) else None, headers=headers)
            resp = conn.getresponse()
            if kind in ("reset", "cut"):
                resp.read()
                conn.close()
                return self.reset()
            self.send_response_only(resp.status, resp.reason)
            data = None
            if resp.getheader("Content-Length") is None and self.command != "HEAD":
                data = resp.read()
            for k, v in resp.getheaders():
                if k.lower() not in HOP and not (data is not None and k.lower() == "content-length"):
                    self.send_header(k, v)
            if data is not None:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "HEAD":
                pass
            elif data is not None:
                self.wfile.write(data)
            else:
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    self.wfile.write(chunk)
            conn.close()

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = handle_any

    return Handler

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--rate", action="append", default=[])
    ap.add_argument("--first")
    ap.add_argument("--after", type=int, default=0)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--only", default=None)
    a = ap.parse_args()
    rates = {}
    for r in a.rate:
        k, p = r.split("=")
        rates[k] = float(p)
    faults = Faults(rates, a.first, a.after, a.seed, a.stats, a.only)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), make_handler(a.upstream, faults))
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()

if __name__ == "__main__":
    main()
