"""Test helpers both runtimes' suites use (the aggregator's imports this file too): free
ports, waiting for a condition, a project observer."""

import contextlib
import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=10.0, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


@contextlib.contextmanager
def project_observer():
    """A project observer on a free port, collecting one message per connection: yields
    (`host:port`, the messages received so far)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    got = []

    def accept():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                got.append(conn.makefile("rb").read().decode())

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"127.0.0.1:{srv.getsockname()[1]}", got
    finally:
        srv.close()
