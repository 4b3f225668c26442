"""FLOps learner: trains the ML repo's ModelManager as a Flower 1.8 NumPy client.

The FLOps manager starts it in the image's working directory as

    python main.py <flops_project_id> <mqtt_ip> <project_observer_ip> <aggregator_ip> <data_tags>

with <data_tags> comma-separated. The aggregator may come up after the learner, so an
unreachable aggregator (gRPC UNAVAILABLE) is retried; every other failure is published on
`flops_manager/learner/failed` (MQTT, QoS 1) and sent to the project observer, and the
process exits non-zero.
"""

import argparse
import json
import logging
import os
import socket
import sys
import time

AGGREGATOR_PORT = 8080
MQTT_PORT = 9027
OBSERVER_PORT = 2727
FAILED_TOPIC = "flops_manager/learner/failed"
DATA_TAGS_ENV = "FLOPS_DATA_TAGS"

log = logging.getLogger("flops-learner")


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number of seconds")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="main.py", description="FLOps learner (Flower 1.8 NumPy client)"
    )
    p.add_argument("flops_project_id")
    p.add_argument("mqtt_ip", help="MQTT broker host[:port] (port defaults to 9027)")
    p.add_argument("project_observer_ip", help=f"project observer host[:port] (default port {OBSERVER_PORT})")
    p.add_argument("aggregator_ip", help=f"Flower server host[:port] (default port {AGGREGATOR_PORT})")
    p.add_argument("data_tags", help="comma-separated tags of the ML data server's data")
    p.add_argument(
        "--retry-delay",
        type=float,
        default=env_float("FLOPS_LEARNER_RETRY_DELAY", 5.0),
        help="seconds between attempts while the aggregator is unavailable "
        "(env FLOPS_LEARNER_RETRY_DELAY, default 5)",
    )
    p.add_argument(
        "--max-wait",
        type=float,
        default=env_float("FLOPS_LEARNER_MAX_WAIT", 1800.0),
        help="give up after this many seconds of an unavailable aggregator; 0 waits forever "
        "(env FLOPS_LEARNER_MAX_WAIT, default 1800)",
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
    except Exception as e:  # noqa: BLE001 - reporting must never hide the original failure
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
    import flwr
    import numpy as np

    def arrays(params):
        return [np.asarray(p) for p in params]

    class Learner(flwr.client.NumPyClient):
        def get_parameters(self, config):
            return arrays(model_manager.get_model_parameters())

        def fit(self, parameters, config):
            model_manager.set_model_parameters(parameters)
            n = model_manager.fit_model()
            return arrays(model_manager.get_model_parameters()), int(n), {}

        def evaluate(self, parameters, config):
            model_manager.set_model_parameters(parameters)
            loss, accuracy, n = model_manager.evaluate_model()
            return float(loss), int(n), {"accuracy": float(accuracy)}

    return Learner()


def is_unavailable(err: BaseException) -> bool:
    import grpc

    return isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAVAILABLE


def run_client(client, server_address: str, retry_delay: float, max_wait: float) -> None:
    """Runs the Flower client; while the aggregator is unavailable, waits and tries again."""
    import flwr

    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            # start_numpy_client(client) is start_client(client.to_client()) plus a
            # deprecation warning, which would repeat on every attempt.
            flwr.client.start_client(
                server_address=server_address, client=client.to_client(), insecure=True
            )
            return
        except Exception as e:  # noqa: BLE001 - only UNAVAILABLE is retried
            if not is_unavailable(e):
                raise
            waited = time.monotonic() - started
            if max_wait and waited + retry_delay > max_wait:
                raise RuntimeError(
                    f"aggregator {server_address} still unavailable after {waited:.0f} s "
                    f"({attempt} attempts)"
                ) from e
            log.info(
                "aggregator %s unavailable (attempt %d); retrying in %.1f s",
                server_address,
                attempt,
                retry_delay,
            )
            time.sleep(retry_delay)


def train(args) -> None:
    tags = [t.strip() for t in args.data_tags.split(",") if t.strip()]
    # data_loading is called by the repo through flops_utils.load_dataset(), without arguments.
    os.environ[DATA_TAGS_ENV] = ",".join(tags)
    from model_manager import ModelManager  # the ML repo's, in the same directory

    model_manager = ModelManager()
    # Data first: a missing dataset fails in seconds, before the aggregator is waited for.
    model_manager.set_model_data()
    host, port = split_host_port(args.aggregator_ip, AGGREGATOR_PORT)
    server = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    log.info("data loaded for tags %s; joining aggregator %s", tags, server)
    run_client(make_client(model_manager), server, args.retry_delay, args.max_wait)
    log.info("training finished: the aggregator closed the session")


def main(argv=None) -> int:
    # Our own handler: flwr logs through its own, and the root logger would repeat those lines.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s flops-learner %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # model_manager.py sits in the working directory (the image's WORKDIR, beside main.py).
    sys.path.insert(0, os.getcwd())
    try:
        train(args)
        return 0
    except (Exception, SystemExit) as e:  # noqa: BLE001 - every failure is reported
        if isinstance(e, SystemExit) and e.code in (0, None):
            return 0
        msg = f"{type(e).__name__}: {e}" if not isinstance(e, SystemExit) else f"exit {e.code}"
        log.error("learner failed: %s", msg, exc_info=not isinstance(e, SystemExit))
        publish_failure(args.flops_project_id, args.mqtt_ip, msg)
        notify_observer(args.project_observer_ip, f"learner {args.flops_project_id} failed: {msg}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
