"""FLOps learner: trains the ML repo's ModelManager as a Flower 1.x NumPy client, as a service.

The FLOps manager starts it in the image's working directory as

    python main.py <flops_project_id> <mqtt_ip> <project_observer_ip> <aggregator_ip> <data_tags>

with <data_tags> comma-separated; each address may carry a port (`host:port`, `[v6]:port`),
by default 9027 (MQTT), 2727 (project observer) and 8080 (aggregator).

The repo's `ModelManager` (model_manager.py, beside this file) is built once and its data
loaded once (`set_model_data`, which reaches the ML data server through data_loading.py), then
the learner serves one Flower training session after another against the aggregator, reusing
both: FLOps (hierarchical FL in particular) runs many sessions against the same learner.

- Waiting: while the aggregator is unavailable (gRPC UNAVAILABLE, or a server that closes before
  giving any task) the learner tries again, 0.5 s after the first attempt, then waits twice as
  long each time up to --retry-delay seconds (learners usually start before the aggregator is
  up: a fixed 5 s wait made round 1 start up to 5 s after it was). --max-wait bounds only
  the wait for the first session; once it has trained, it waits for the next session forever.
  Each attempt closes every gRPC channel and request stream it opened before the next one (flwr
  alone leaves a gRPC thread behind per attempt), so retrying for hours costs nothing.
- Input schema: with each training result the learner sends one metric, `flops_input_schema`,
  MLflow's Schema JSON of its model's input as the repo's code feeds it (tensor shapes and
  dtypes, or DataFrame column names and types; never a data value), from which the aggregator
  gives the logged model its signature. Captured by flops_input_schema.py (its docstring says
  how, per kind of model); when it cannot be, it logs so once and the metrics stay empty.
- "training session N finished" is logged whenever the aggregator ends a session. An aggregator
  that goes away mid-session (UNAVAILABLE) is not a failure: the learner waits for the next one.
- Exit 0: after --max-sessions sessions (log line "training finished: ..."), or on
  SIGTERM/SIGINT (log line "received SIGTERM: stopping"), at any point.
- Exit 1: any other failure (missing data, an exception in the model code, an aggregator that
  never came for the first session) is published on `flops_manager/learner/failed` (MQTT QoS 1,
  waiting for the broker's acknowledgement) as {"flops_project_id", "error_msg"} and sent as one
  line to the project observer.

Flags (each with an environment default):
  --retry-delay S   FLOPS_LEARNER_RETRY_DELAY   the longest wait between attempts (default 5)
  --max-wait S      FLOPS_LEARNER_MAX_WAIT      give up waiting for the first session after S
                                                seconds; 0 waits forever (default 1800)
  --max-sessions N  FLOPS_LEARNER_MAX_SESSIONS  exit 0 after N finished sessions; 0 serves
                                                forever (default 0)
Other environment: FLOPS_DATA_TAGS is set from <data_tags> for data_loading.py, which reads
ML_DATA_SERVER_HOST / ML_DATA_SERVER_PORT (see its docstring).
"""

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time

AGGREGATOR_PORT = 8080
MQTT_PORT = 9027
OBSERVER_PORT = 2727
FAILED_TOPIC = "flops_manager/learner/failed"
DATA_TAGS_ENV = "FLOPS_DATA_TAGS"

log = logging.getLogger("flops-learner")


def env_number(name: str, default, kind=float):
    raw = os.environ.get(name, "")
    try:
        value = kind(raw) if raw else default
    except ValueError:
        value = None
    if value is None or value < 0:
        what = "seconds" if kind is float else "count"
        raise SystemExit(f"{name}={raw!r} is not a non-negative {what}")
    return value


def non_negative(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative number")
        return value

    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="main.py", description="FLOps learner (Flower 1.x NumPy client, one session after another)"
    )
    p.add_argument("flops_project_id")
    p.add_argument("mqtt_ip", help="MQTT broker host[:port] (port defaults to 9027)")
    p.add_argument("project_observer_ip", help=f"project observer host[:port] (default port {OBSERVER_PORT})")
    p.add_argument("aggregator_ip", help=f"Flower server host[:port] (default port {AGGREGATOR_PORT})")
    p.add_argument("data_tags", help="comma-separated tags of the ML data server's data")
    p.add_argument(
        "--retry-delay",
        type=non_negative(float),
        default=env_number("FLOPS_LEARNER_RETRY_DELAY", 5.0),
        help="the longest wait between attempts while the aggregator is unavailable; waits "
        "start at 0.5 s and double (env FLOPS_LEARNER_RETRY_DELAY, default 5)",
    )
    p.add_argument(
        "--max-wait",
        type=non_negative(float),
        default=env_number("FLOPS_LEARNER_MAX_WAIT", 1800.0),
        help="give up after this many seconds without a first session; 0 waits forever "
        "(env FLOPS_LEARNER_MAX_WAIT, default 1800)",
    )
    p.add_argument(
        "--max-sessions",
        type=non_negative(int),
        default=env_number("FLOPS_LEARNER_MAX_SESSIONS", 0, int),
        help="exit after this many finished training sessions; 0 serves forever "
        "(env FLOPS_LEARNER_MAX_SESSIONS, default 0)",
    )
    return p.parse_args(argv)


def split_host_port(address: str, default_port: int):
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if address.count(":") == 1:
        host, _, port = address.partition(":")
        return host, int(port)
    return address, default_port


def publish_failure(project_id: str, mqtt_address: str, error_msg: str, timeout=5.0) -> bool:
    """QoS 1 publish that waits for the broker's PUBACK, so the message is not lost at exit."""
    import paho.mqtt.client as mqtt  # flops-utils' dependency, in every learner image

    host, port = split_host_port(mqtt_address, MQTT_PORT)
    payload = json.dumps({"flops_project_id": project_id, "error_msg": error_msg})
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    try:
        client.connect(host, port, keepalive=30)
        client.loop_start()
        info = client.publish(FAILED_TOPIC, payload, qos=1)
        info.wait_for_publish(timeout)
        return info.is_published()
    except Exception as e:
        log.warning("could not publish %s to %s:%s: %s", FAILED_TOPIC, host, port, e)
        return False
    finally:
        client.disconnect()
        client.loop_stop()


def notify_observer(observer_address: str, msg: str, timeout=5.0) -> None:
    """One UTF-8 message per connection, as the project observer expects."""
    host, port = split_host_port(observer_address, OBSERVER_PORT)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(msg.encode())
    except OSError as e:
        log.warning("could not reach the project observer %s:%s: %s", host, port, e)


def make_client(model_manager):
    """A NumPy client over the ModelManager; `.tasks` counts what the aggregator asked for."""
    import flwr
    import numpy as np
    from flops_input_schema import InputSchema

    schema = InputSchema(model_manager)

    def arrays(params):
        return [np.asarray(p) for p in params]

    class Learner(flwr.client.NumPyClient):
        tasks = 0

        def get_parameters(self, config):
            self.tasks += 1
            return arrays(model_manager.get_model_parameters())

        def fit(self, parameters, config):
            self.tasks += 1
            model_manager.set_model_parameters(parameters)
            n = schema.during(model_manager.fit_model)
            return arrays(model_manager.get_model_parameters()), int(n), schema.metrics()

        def evaluate(self, parameters, config):
            self.tasks += 1
            model_manager.set_model_parameters(parameters)
            loss, accuracy, n = schema.during(model_manager.evaluate_model)
            return float(loss), int(n), {"accuracy": float(accuracy)}

    return Learner()


def grpc_code(err: BaseException):
    import grpc

    return err.code() if isinstance(err, grpc.RpcError) else None


def connection_lost(err: BaseException, tasks: int) -> bool:
    """The aggregator is not (or no longer) there, rather than a failure of the learner.

    UNAVAILABLE: nothing listens, or the server went away. CANCELLED before any task: the
    stream ended before the learner had a part in a session, e.g. a server stopping as we joined.
    """
    import grpc

    code = grpc_code(err)
    return code == grpc.StatusCode.UNAVAILABLE or (code == grpc.StatusCode.CANCELLED and tasks == 0)


def stop_on_signals() -> None:
    """SIGTERM/SIGINT end the process at once with exit 0, whatever it is doing.

    The signals are blocked in every thread (threads inherit the mask, so this runs before any
    is started) and taken by one waiting thread: some flwr releases install their own handlers
    in start_client, which would end only the session, as if the aggregator had. Leaving with
    os._exit is safe (the model lives on the aggregator) and prompt (unwinding through grpc's
    blocking calls can deadlock the interpreter's exit).
    """
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    # Forked workers (multiprocessing, data loaders) have no waiting thread: default behaviour.
    os.register_at_fork(after_in_child=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, signals))

    def wait():
        signum = signal.sigwait(signals)
        log.info("received %s: stopping", signal.Signals(signum).name)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(0)

    threading.Thread(target=wait, name="signals", daemon=True).start()


class OncePerMessage(logging.Filter):
    """Newer flwr logs a deprecation banner on every start_client call, i.e. every retry."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record):
        if record.levelno < logging.WARNING or "deprecat" not in record.getMessage().lower():
            return True
        key = record.getMessage()
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def quiet_closed_channel_polls() -> None:
    """grpc's channel-state polling thread (flwr subscribes to it) may race the channel's close
    after a failed attempt and print a harmless traceback: a false alarm in a service that
    retries forever. Only that one is dropped."""
    default = threading.excepthook

    def hook(args):
        if isinstance(args.exc_value, ValueError) and "Cannot monitor channel state" in str(args.exc_value):
            return
        default(args)

    threading.excepthook = hook


class AttemptResources:
    """Every gRPC channel and request stream one start_client call opens, to close after it.

    flwr's grpc-bidi connection (flwr 1.8 to 1.25) closes its channel but never ends the request
    stream it feeds from a queue: gRPC's thread reading that queue waits for good, one thread
    (holding the dead call) per attempt, hundreds over a long wait for the aggregator. Channels
    are closed here again (no-op when flwr did) and each queue gets its end marker, so an attempt
    leaves nothing behind. Tracked through the connection module's own names (create_channel,
    Queue), which flwr looks up there at each connection.
    """

    MODULES = ("flwr.client.grpc_client.connection", "flwr.compat.client.grpc_client.connection")

    def __init__(self):
        import importlib

        self.channels, self.queues = [], []
        self.patched = 0
        for name in self.MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, "create_channel") and hasattr(module, "Queue"):
                self.track(module)
                self.patched += 1
        if not self.patched:
            log.warning("flwr's grpc connection module not found: attempts are not cleaned up")

    def track(self, module) -> None:
        create_channel, base_queue = module.create_channel, module.Queue
        channels, queues = self.channels, self.queues

        def tracked_channel(*args, **kwargs):
            channel = create_channel(*args, **kwargs)
            channels.append(channel)
            return channel

        class TrackedQueue(base_queue):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                queues.append(self)

        module.create_channel, module.Queue = tracked_channel, TrackedQueue

    def close(self) -> None:
        import queue

        while self.channels:
            try:
                self.channels.pop().close()
            except Exception as e:  # noqa: BLE001 - closing must not end the service
                log.debug("closing a gRPC channel: %s", e)
        while self.queues:
            q = self.queues.pop()
            try:
                while True:
                    q.get_nowait()  # an unsent reply: the call is over
            except queue.Empty:
                pass
            q.put_nowait(None)  # iter(queue.get, None) ends: so does gRPC's reading thread


FIRST_RETRY_DELAY = 0.5


def retry_wait(attempt: int, longest: float) -> float:
    """Seconds to wait after failed attempt `attempt` (1, 2, ...): 0.5, 1, 2, ... up to `longest`."""
    return min(longest, FIRST_RETRY_DELAY * 2 ** min(attempt - 1, 16))


def run_sessions(client, server_address: str, retry_delay: float, max_wait: float, max_sessions: int) -> int:
    """Serves training sessions until max_sessions (0: forever); returns the number served."""
    import flwr

    logging.getLogger("flwr").addFilter(OncePerMessage())
    quiet_closed_channel_polls()
    resources = AttemptResources()
    sessions = 0
    joined = False  # the learner has taken part in a session: no more --max-wait
    waiting_since = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        client.tasks = 0
        try:
            # start_numpy_client(client) is start_client(client.to_client()) plus a
            # deprecation warning, which would repeat on every attempt. Its max_retries and
            # max_wait_time (flwr >= 1.8) are not used: the grpc-bidi transport, the only one
            # the legacy start_server speaks, ignores them (flwr 1.8 to 1.25 pass the retry
            # policy to grpc_connection "for compatibility" only) and raises the first
            # UNAVAILABLE; and FLOps needs more than a connection retry: waiting again after
            # a session (sessions follow one another), a bound on the first wait only, a
            # failure report. Hence this loop.
            flwr.client.start_client(
                server_address=server_address, client=client.to_client(), insecure=True
            )
            lost = None
        except Exception as e:
            if not connection_lost(e, client.tasks):
                raise
            lost = e
        finally:
            resources.close()
        if client.tasks:
            joined = True
            if lost is None:
                sessions += 1
                log.info("training session %d finished", sessions)
                if max_sessions and sessions >= max_sessions:
                    return sessions
            else:
                log.warning(
                    "the aggregator %s went away during a session (%s); waiting for the next one",
                    server_address,
                    grpc_code(lost),
                )
            log.info("waiting for the next training session at %s", server_address)
            attempt = 0
            waiting_since = time.monotonic()
            # The ending server stays up briefly; joining it again would only be cancelled.
            time.sleep(retry_delay)
            continue
        waited = time.monotonic() - waiting_since
        wait = retry_wait(attempt, retry_delay)
        if not joined and max_wait and waited + wait > max_wait:
            raise RuntimeError(
                f"aggregator {server_address} still unavailable after {waited:.0f} s "
                f"({attempt} attempts)"
            ) from lost
        what = "unavailable" if lost is not None else "closed the connection without a task"
        log.info(
            "aggregator %s %s (attempt %d); retrying in %.1f s", server_address, what, attempt, wait
        )
        time.sleep(wait)


def serve(args) -> None:
    tags = [t.strip() for t in args.data_tags.split(",") if t.strip()]
    # data_loading is called by the repo through flops_utils.load_dataset(), without arguments.
    os.environ[DATA_TAGS_ENV] = ",".join(tags)
    from model_manager import ModelManager  # the ML repo's, in the same directory

    log.info("model code imported")
    model_manager = ModelManager()
    # Data first: a missing dataset fails in seconds, before the aggregator is waited for.
    model_manager.set_model_data()
    host, port = split_host_port(args.aggregator_ip, AGGREGATOR_PORT)
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    log.info("data loaded for tags %s; joining aggregator %s", tags, server)
    n = run_sessions(make_client(model_manager), server, args.retry_delay, args.max_wait, args.max_sessions)
    log.info("training finished: %d session(s), the --max-sessions limit", n)


def main(argv=None) -> int:
    # Our own handler: flwr logs through its own, and the root logger would repeat those lines.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s flops-learner %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    log.info("runtime started")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # model_manager.py sits in the working directory (the image's WORKDIR, beside main.py).
    sys.path.insert(0, os.getcwd())
    stop_on_signals()
    try:
        serve(args)
        return 0
    except (Exception, SystemExit) as e:
        if isinstance(e, SystemExit) and e.code in (0, None):
            return 0
        msg = f"{type(e).__name__}: {e}" if not isinstance(e, SystemExit) else f"exit {e.code}"
        log.error("learner failed: %s", msg, exc_info=not isinstance(e, SystemExit))
        publish_failure(args.flops_project_id, args.mqtt_ip, msg)
        notify_observer(args.project_observer_ip, f"learner {args.flops_project_id} failed: {msg}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
