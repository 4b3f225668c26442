"""FLOps aggregator: runs federated learning over the FLOps learners with Flower 1.8 (FedAvg).

The FLOps manager starts it in the image's working directory (which holds the ML repo's files,
model_manager.py among them) as

    python main.py <flops_project_id> <mqtt_ip> <project_observer_ip> <mlflow_tracking_server_url>
        <aggregator_type> <training_iterations> <min_available_clients> <min_fit_clients>
        <min_evaluate_clients> [<root_aggregator_ip>] [--track-locally] [--deactivate-notifications]

Addresses may carry a port (`host:port`, `[v6]:port`); the defaults are 9027 (MQTT), 2727 (project
observer) and 8080 (root aggregator). A tracking server URL without a scheme gets `http://`.

aggregator_type:
  CLASSIC_AGGREGATOR  a Flower server on 0.0.0.0:8080 for <training_iterations> rounds of FedAvg,
                      starting from `ModelManager().get_model_parameters()` (the aggregator has no
                      data: `set_model_data` is never called). Every round is one MLflow run
                      `FLOps FL round <n>` in the experiment `FLOps Project <flops_project_id>`
                      (params: the client minimums and fractions; metrics: the learners' `loss`
                      and `accuracy`, weighted by their example counts). The best round's model
                      (the first, then any with higher accuracy and lower loss) is saved with the
                      MLflow flavor ML_MODEL_FLAVOR (with the repo's top-level modules as its
                      code) and, after the last round, logged to that round's run under the
                      artifact path `logged_model_artifact`, with the signature of the learners'
                      input schema (below) when they sent one.
                      Failures are tolerated as FL tolerates them (Flower's accept_failures): a
                      round aggregates the results it received; each failed learner is logged
                      and told to the observer, and every round's counts (connected `clients`,
                      `fit_results`, `fit_failures`, `evaluate_results`, `evaluate_failures`)
                      are metrics of its run and listed in `success`. A round waits for its
                      client minimums to be connected (then samples every connected learner),
                      for at most FLOPS_AGGREGATOR_CLIENT_WAIT seconds; a learner counts once its
                      stream has stayed open 1 s, and a stream that ended before Flower took it
                      is never registered (stock Flower would keep it, and a round sampling it
                      would wait for it forever). The project fails when
                      a round gets no training result at all, or when the minimums are not met
                      within that wait; the error says which.
  ROOT_AGGREGATOR     the same, with cluster aggregators as its clients; a round is a cycle (a
                      cluster aggregator whose cycle fails is a failed client of that round).
  CLUSTER_AGGREGATOR  a Flower client of <root_aggregator_ip>: each `fit` from the root runs a
                      whole cycle (<training_iterations> rounds) with this cluster's learners on
                      its own Flower server (0.0.0.0:8080), starting from the root's parameters,
                      and returns the result and the number of training examples the cycle used
                      (summed over its rounds); `evaluate` returns the cycle's mean loss and
                      accuracy over its rounds and its evaluation examples. Its rounds tolerate
                      learner failures the same way. No MLflow, no MQTT: it only logs. It runs
                      until stopped, reconnecting whenever the root goes away or a cycle fails
                      (the root counts it as a failed client of that cycle). Its fit metrics
                      forward the cycle's input schema.

Input schema (flops_signature.py): each learner sends with its training result the metric
`flops_input_schema`, MLflow's Schema JSON of its model's input (tensor dtypes and shapes with a
free batch dimension, or DataFrame column names and types; never a data value). A round keeps
the most common one (a warning names how the others differ); the model is saved with
`signature=ModelSignature(inputs=Schema.from_json(...))`, so MLflow's scoring server casts
request JSON to the model's dtypes. The log says "model logged with the learners' input
signature: ..." or "learners sent no input schema: the model is logged without a signature".

--track-locally logs to a local MLflow file store (./mlruns) instead of the tracking server.
--deactivate-notifications sends nothing to the MQTT broker and the project observer.

Notifications (classic and root; MQTT QoS 1, JSON, waiting for the broker's acknowledgement):
  flops_manager/aggregator/started  {flops_project_id, aggregator_type} once the server listens
                                     and the model code and MLflow are loaded
  flops_manager/aggregator/success  {flops_project_id, aggregator_type, accuracy, loss,
                                     experiment_id, run_id, rounds}: the best round's metrics
                                     and run, which holds `logged_model_artifact`; `rounds` lists
                                     each round's counts ({round, clients, fit_results,
                                     fit_failures, evaluate_results, evaluate_failures})
  flops_manager/aggregator/failed   {flops_project_id, aggregator_type, error_msg}
and plain-text messages to the project observer (one per TCP connection): started (with the
tracking URL), each round's failed clients, the best model's accuracy and loss (and the failures
per round), failures of the project. An unreachable broker or observer only logs a warning.

Exit codes: 0 done; 1 failed (reported as above: a bad argument, an unreachable tracking server,
the model code raising, a round without any training result, too few clients within
FLOPS_AGGREGATOR_CLIENT_WAIT, MLflow failing); 2 unusable command line.

Environment:
  ML_MODEL_FLAVOR                  sklearn, pytorch, tensorflow or keras (set in the image)
  FLOPS_AGGREGATOR_PORT            port of this aggregator's Flower server (default 8080)
  FLOPS_AGGREGATOR_RETRY_DELAY     cluster aggregator: seconds between attempts to reach the
                                   root aggregator (default 5)
  FLOPS_AGGREGATOR_CLIENT_WAIT     seconds a round waits for its client minimums to be connected
                                   before the project (a cluster's cycle) fails (default 1800;
                                   Flower's own wait is 24 h)
  FLOPS_TRACKING_SERVER_WAIT       seconds to wait for an unreachable tracking server at start
                                   before failing (default 10)
  MLFLOW_HTTP_REQUEST_MAX_RETRIES  MLflow's own; defaulted here to 3 and 30 s (MLflow's 5 to 7
  MLFLOW_HTTP_REQUEST_TIMEOUT      retries with backoff and 120 s timeouts would hide an outage
                                   for minutes)
  MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING  defaulted here to true (CPU, memory, disk and network
                                   metrics in every round's run; MLflow >= 2.8, needs psutil)
  FLWR_TELEMETRY_ENABLED=0         keeps Flower from trying to send telemetry (set in the image)
"""

import argparse
import json
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import time

import flops_signature  # beside this file

MQTT_PORT = 9027
OBSERVER_PORT = 2727
AGGREGATOR_PORT = 8080
TOPIC = "flops_manager/aggregator/{}"
MODEL_ARTIFACT_PATH = "logged_model_artifact"
# Beside the model: every distribution the aggregator trained and logged it with. The
# trained-model image keeps what the model's requirements leave open to these versions
# (MLflow infers `torch`, not the NumPy it ran with).
ENVIRONMENT_FILE = "flops-environment.txt"


def write_environment(dest: str) -> None:
    """Writes `name==version` of every installed distribution to dest (best effort)."""
    import importlib.metadata as md

    try:
        lines = sorted({f"{d.metadata['Name']}=={d.version}" for d in md.distributions() if d.metadata["Name"]})
        with open(dest, "w") as f:
            f.write("\n".join(lines) + "\n")
    except OSError as e:
        log.warning("could not write %s: %s", dest, e)
FLAVORS = ("sklearn", "pytorch", "tensorflow", "keras")
AGGREGATOR_TYPES = ("CLASSIC_AGGREGATOR", "ROOT_AGGREGATOR", "CLUSTER_AGGREGATOR")
# The strategy's attributes FLOps logs as the params of every round's run.
LOGGED_STRATEGY_PARAMS = (
    "min_available_clients",
    "min_fit_clients",
    "min_evaluate_clients",
    "fraction_fit",
    "fraction_evaluate",
)

# What the clients of a round did, logged as metrics of its run and listed in `success`.
ROUND_COUNT_METRICS = ("clients", "fit_results", "fit_failures", "evaluate_results", "evaluate_failures")

log = logging.getLogger("flops-aggregator")


class AggregatorError(RuntimeError):
    """A failure whose message is complete as it is (it becomes the `error_msg`)."""


def env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        return float(raw) if raw else default
    except ValueError:
        raise AggregatorError(f"{name}={raw!r} is not a number") from None


# ---------------------------------------------------------------------------------------------
# Command line


def parse_args(argv):
    p = argparse.ArgumentParser(prog="main.py", description="FLOps aggregator (Flower 1.8, FedAvg)")
    p.add_argument("flops_project_id")
    p.add_argument("mqtt_ip", help=f"MQTT broker host[:port] (default port {MQTT_PORT})")
    p.add_argument("project_observer_ip", help=f"project observer host[:port] (default port {OBSERVER_PORT})")
    p.add_argument("mlflow_tracking_server_url", help="MLflow tracking server URL (http:// if no scheme)")
    p.add_argument("aggregator_type", help=", ".join(AGGREGATOR_TYPES))
    p.add_argument("training_iterations", help="rounds (classic), cycles (root) or rounds per cycle (cluster)")
    p.add_argument("min_available_clients")
    p.add_argument("min_fit_clients")
    p.add_argument("min_evaluate_clients")
    p.add_argument("root_aggregator_ip", nargs="?", help="cluster aggregator only: the root's host[:port]")
    p.add_argument("--track-locally", action="store_true", help="log to ./mlruns, not the tracking server")
    p.add_argument("--deactivate-notifications", action="store_true", help="no MQTT, no project observer")
    # Values are checked by validate(), inside the reporting: a bad value is published as `failed`.
    return p.parse_args(argv)


def validate(args) -> None:
    if args.aggregator_type not in AGGREGATOR_TYPES:
        raise AggregatorError(
            f"unknown aggregator type {args.aggregator_type!r} (expected one of {', '.join(AGGREGATOR_TYPES)})"
        )
    for name, minimum in (
        ("training_iterations", 1),
        ("min_available_clients", 1),
        ("min_fit_clients", 1),
        ("min_evaluate_clients", 0),
    ):
        raw = getattr(args, name)
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise AggregatorError(f"{name} must be an integer >= {minimum}, got {raw!r}")
        setattr(args, name, value)
    if args.aggregator_type == "CLUSTER_AGGREGATOR" and not args.root_aggregator_ip:
        raise AggregatorError("a CLUSTER_AGGREGATOR needs the root aggregator's address (<root_aggregator_ip>)")
    client_wait()  # a bad FLOPS_AGGREGATOR_CLIENT_WAIT fails now, not in the first round
    url = args.mlflow_tracking_server_url.strip().rstrip("/")
    args.mlflow_tracking_server_url = url if "://" in url else f"http://{url}"


def split_host_port(address: str, default_port: int):
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if address.count(":") == 1:
        host, _, port = address.partition(":")
        return host, int(port)
    return address, default_port


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_port() -> int:
    raw = os.environ.get("FLOPS_AGGREGATOR_PORT", "")
    try:
        return int(raw) if raw else AGGREGATOR_PORT
    except ValueError:
        raise AggregatorError(f"FLOPS_AGGREGATOR_PORT={raw!r} is not a port number") from None


# ---------------------------------------------------------------------------------------------
# Notifications: FLOps manager (MQTT) and project observer (TCP)


class Notifier:
    def __init__(self, args):
        self.enabled = not args.deactivate_notifications
        self.project_id = args.flops_project_id
        self.aggregator_type = args.aggregator_type
        self.mqtt_address = args.mqtt_ip
        self.observer_address = args.project_observer_ip

    def publish(self, status: str, timeout=5.0, **fields) -> bool:
        """QoS 1, waiting for the broker's PUBACK so the message is not lost when we exit."""
        if not self.enabled:
            return False
        import paho.mqtt.client as mqtt

        topic = TOPIC.format(status)
        payload = json.dumps(
            {"flops_project_id": self.project_id, "aggregator_type": self.aggregator_type, **fields}
        )
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.connect_timeout = timeout
        try:
            host, port = split_host_port(self.mqtt_address, MQTT_PORT)
            client.connect(host, port, keepalive=30)
            client.loop_start()
            info = client.publish(topic, payload, qos=1)
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise TimeoutError(f"no acknowledgement within {timeout:.0f} s")
            log.info("published %s", topic)
            return True
        except Exception as e:  # noqa: BLE001 - a notification must never stop the aggregator
            log.warning("could not publish %s to %s: %s", topic, self.mqtt_address, e)
            return False
        finally:
            client.disconnect()
            client.loop_stop()

    def observe(self, msg: str, timeout=5.0) -> None:
        """One UTF-8 message per connection, as the project observer expects."""
        if not self.enabled:
            return
        try:
            host, port = split_host_port(self.observer_address, OBSERVER_PORT)
            with socket.create_connection((host, port), timeout=timeout) as s:
                s.sendall(msg.encode())
        except (OSError, ValueError) as e:
            log.warning("could not reach the project observer %s: %s", self.observer_address, e)


# ---------------------------------------------------------------------------------------------
# The ML repo's model code


def model_call(what: str, fn, *args):
    """Calls the ML repo's code; its exceptions become errors that name the call."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        raise AggregatorError(f"the ML repo's {what} raised {type(e).__name__}: {e}") from e


def load_model_manager():
    try:
        from model_manager import ModelManager  # the ML repo's, in the working directory
    except Exception as e:  # noqa: BLE001 - ImportError or the module's own failure
        raise AggregatorError(
            f"cannot import ModelManager from model_manager.py in {os.getcwd()}: {type(e).__name__}: {e}"
        ) from e
    return model_call("ModelManager()", ModelManager)


def initial_ndarrays(model_manager):
    import numpy as np

    params = model_call("ModelManager.get_model_parameters()", model_manager.get_model_parameters)
    try:
        return [np.asarray(p) for p in params]
    except Exception as e:  # noqa: BLE001
        raise AggregatorError(
            f"ModelManager.get_model_parameters() must return a list of NumPy arrays: {type(e).__name__}: {e}"
        ) from e


def flavor_module():
    import importlib

    flavor = os.environ.get("ML_MODEL_FLAVOR", "").strip().lower()
    if flavor not in FLAVORS:
        raise AggregatorError(
            f"ML_MODEL_FLAVOR={flavor!r} is not a supported MLflow model flavor ({', '.join(FLAVORS)})"
        )
    try:
        return importlib.import_module(f"mlflow.{flavor}")
    except Exception as e:  # noqa: BLE001
        raise AggregatorError(f"cannot load MLflow's {flavor} flavor: {type(e).__name__}: {e}") from e


def repo_code_paths():
    """The ML repo's top-level modules and packages in the working directory (not this file).

    Saved with the model (its `code/`, put on sys.path when it is loaded): a model whose class
    is defined in the repo (a torch nn.Module in model_manager.py, say) is pickled by reference
    and cannot be loaded for serving without it.
    """
    here = os.path.abspath(__file__)
    runtime = {here, os.path.abspath(flops_signature.__file__)}
    paths = []
    for name in sorted(os.listdir(os.getcwd())):
        path = os.path.abspath(name)
        if name.startswith((".", "__")) or path in runtime:
            continue
        if (name.endswith(".py") and os.path.isfile(path)) or os.path.isfile(os.path.join(path, "__init__.py")):
            paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# The Flower strategy


def describe_failures(failures) -> str:
    parts = []
    for failure in failures[:3]:
        if isinstance(failure, BaseException):
            what = f"{type(failure).__name__}: {failure}".rstrip(": ")
            # What Flower's gRPC server reports for a client that went away mid-round.
            parts.append(f"connection lost ({what})" if type(failure).__name__ == "GrpcBridgeClosed" else what)
        else:  # (client, result) with a non-OK status
            status = getattr(failure[1], "status", None)
            parts.append(getattr(status, "message", "") or str(status))
    more = f" (+{len(failures) - 3} more)" if len(failures) > 3 else ""
    return "; ".join(parts) + more


def peer_words(args):
    """What the server's clients are, and where their own errors are reported."""
    if args.aggregator_type == "ROOT_AGGREGATOR":
        return "cluster aggregator(s)", "see the cluster aggregators' logs"
    return "learner(s)", "the learners report their own errors on flops_manager/learner/failed"


def client_wait() -> float:
    wait = env_number("FLOPS_AGGREGATOR_CLIENT_WAIT", 1800.0)
    if wait <= 0:
        raise AggregatorError(f"FLOPS_AGGREGATOR_CLIENT_WAIT={wait!r} must be a positive number of seconds")
    return wait


def guard_client_registration() -> None:
    """Keeps Flower's server from holding a client whose stream has already ended.

    Flower's legacy gRPC servicer (flwr 1.8 to 1.25) registers a client when its Join handler
    first runs and unregisters it from a callback on the stream's end. A stream that ends before
    the handler runs (a learner's attempt given up while the server came up) is registered after
    its end; gRPC refuses the callback (add_callback returns False), Flower ignores that, and the
    client stays for good: a round that samples it waits for its answer forever (no round
    timeout in FLOps). This is Flower's function with that refusal handled; Join looks it up in
    its module at each call.
    """
    try:
        from flwr.server.superlink.fleet.grpc_bidi import flower_service_servicer as servicer
    except ImportError as e:  # a flwr outside the tested range: keep its own behaviour
        log.warning("cannot guard Flower's client registration (%s)", e)
        return
    if not hasattr(servicer, "register_client_proxy"):
        log.warning("cannot guard Flower's client registration (no register_client_proxy)")
        return

    def register_client_proxy(client_manager, client_proxy, context) -> bool:
        ended = []

        def on_end():
            ended.append(True)
            client_proxy.bridge.close()
            client_manager.unregister(client_proxy)  # idempotent

        # The callback first: a stream that ends from here on is unregistered by it.
        if not context.add_callback(on_end):
            client_proxy.bridge.close()
            log.info("a client's stream ended before the server took it; not registered")
            return False
        if not client_manager.register(client_proxy):
            return False
        if ended:  # ended between the two calls: the callback ran before the registration
            client_manager.unregister(client_proxy)
            return False
        return True

    servicer.register_client_proxy = register_client_proxy


# A client counts (is waited for, sampled) once its stream has stayed open this long: a stream
# that ends at once (a learner's attempt given up as the server came up, a learner killed as it
# joined) would only be a failed client of the round that sampled it.
CLIENT_SETTLE_SECONDS = 1.0


def make_client_manager(args):
    """Flower's client pool, with settled clients only, logging arrivals and departures, with a
    bounded wait for clients (Flower waits up to 24 h per round; FLOps FLOPS_AGGREGATOR_CLIENT_WAIT).
    """
    import threading

    from flwr.server.client_manager import SimpleClientManager

    word = "cluster aggregator" if args.aggregator_type == "ROOT_AGGREGATOR" else "learner"
    wait = client_wait()

    class ClientManager(SimpleClientManager):
        def __init__(self):
            super().__init__()
            self.wait = wait
            self.settling = {}  # cid -> client, until CLIENT_SETTLE_SECONDS have passed
            self.lock = threading.Lock()

        def register(self, client) -> bool:
            with self.lock:
                if client.cid in self.settling or client.cid in self.clients:
                    return False
                self.settling[client.cid] = client
            timer = threading.Timer(CLIENT_SETTLE_SECONDS, self.settle, (client,))
            timer.daemon = True
            timer.start()
            return True

        def settle(self, client) -> None:
            with self.lock:
                if self.settling.pop(client.cid, None) is None:
                    return  # it left while settling
                super().register(client)
                n = len(self)
            log.info("%s joined (%d connected)", word, n)

        def unregister(self, client) -> None:
            with self.lock:
                if self.settling.pop(client.cid, None) is not None:
                    return
                if client.cid not in self.clients:
                    return
                super().unregister(client)
                n = len(self)
            log.info("%s left (%d connected)", word, n)

        def wait_for(self, num_clients: int, timeout=None) -> bool:
            return super().wait_for(num_clients, self.wait if timeout is None else timeout)

    return ClientManager()


def make_strategy(args, prepare, tracker=None, notifier=None):
    """FedAvg as FLOps runs it, reporting every round to `tracker`.

    `prepare()` returns (initial parameters as NumPy arrays, the ModelManager or None); it runs
    once Flower's gRPC server listens, so the learners connect and settle while it loads the
    model code and MLflow (the aggregator's slowest start step: seconds, bench/start.sh).

    A round aggregates the results it received (Flower's accept_failures): failed clients are
    logged, told to the observer and counted per round. The project fails when a round gets no
    result at all, when not enough clients connect within FLOPS_AGGREGATOR_CLIENT_WAIT, or when
    the model code or MLflow fails. Flower's legacy start_server leaves its gRPC server running
    when the strategy raises, so such an error is recorded instead and every later round is
    cancelled (configure_* return no clients); start_server then ends normally and run_rounds()
    raises the recorded error.
    """
    import flwr
    import numpy as np
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    peers, hint = peer_words(args)

    def failed_peers(what, results, failures):
        return (
            f"{len(failures)} of {len(results) + len(failures)} {peers} failed in {what} "
            f"({describe_failures(failures)})"
        )

    class FLOpsFedAvg(flwr.server.strategy.FedAvg):
        def __init__(self):
            super().__init__(
                min_available_clients=args.min_available_clients,
                min_fit_clients=args.min_fit_clients,
                min_evaluate_clients=args.min_evaluate_clients,
                accept_failures=True,  # Flower's default, stated: FLOps relies on it
                # The learners' input schema (FedAvg warns about fit metrics it cannot aggregate).
                fit_metrics_aggregation_fn=flops_signature.fit_metrics_aggregation(peers),
            )
            self.error = None
            self.on_started = None
            self.model_manager = None
            self.parameters = []  # the latest aggregate, as NumPy arrays
            self.rounds = []  # (round, loss, accuracy, evaluation examples)
            self.counts = {}  # round -> what its clients did (the `rounds` of `success`)
            self.training_examples = 0
            self.input_schema = None  # the learners' latest (flops_signature.py)

        def fail(self, server_round, err):
            if self.error is None:
                msg = str(err) if isinstance(err, AggregatorError) else f"{type(err).__name__}: {err}"
                self.error = AggregatorError(f"round {server_round}: {msg}")
                log.error("%s; cancelling the remaining rounds", self.error)
                if tracker is not None:
                    tracker.abort()

        def count(self, server_round):
            return self.counts.setdefault(
                server_round,
                {"round": server_round, "clients": 0, "fit_results": 0, "fit_failures": 0,
                 "evaluate_results": 0, "evaluate_failures": 0},
            )

        def round_counts(self):
            return [self.counts[r] for r in sorted(self.counts)]

        def tolerate(self, server_round, what, results, failures):
            msg = (f"round {server_round}: {failed_peers(what, results, failures)}; "
                   f"going on with the {len(results)} result(s) received")
            log.warning("%s", msg)
            if notifier is not None:
                notifier.observe(f"aggregator of FLOps project {args.flops_project_id}: {msg}")

        def sample(self, server_round, what, need, client_manager, configure):
            """configure() once `need` clients are connected, within the bounded wait."""
            deadline = time.monotonic() + client_manager.wait
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not client_manager.wait_for(need, timeout=left):
                    have = client_manager.num_available()
                    self.fail(server_round, AggregatorError(
                        f"not enough {peers} for {what}: {have} connected, {need} required "
                        f"(the client minimums), after waiting {client_manager.wait:.0f} s "
                        "(FLOPS_AGGREGATOR_CLIENT_WAIT)"))
                    return []
                instructions = configure()
                if instructions:
                    return instructions
                # A client left between the wait and the sampling: wait again.
                time.sleep(0.1)

        def initialize_parameters(self, client_manager):
            # Called once the gRPC server listens (clients are taken from here on): load, then
            # announce the start.
            try:
                initial, self.model_manager = prepare()
            except Exception as e:  # noqa: BLE001 - raised as it is by run_rounds()
                # No round runs (configure_* see the error); never None: Flower would then ask
                # a client for the parameters and wait for one.
                self.error = e
                log.error("cannot start (%s); cancelling the rounds", e)
                return ndarrays_to_parameters([])
            self.parameters = list(initial)
            if self.on_started is not None:
                self.on_started()
            return ndarrays_to_parameters(self.parameters)

        def configure_fit(self, server_round, parameters, client_manager):
            if self.error is not None:
                return []
            # Waiting first makes FedAvg sample every connected client (fraction_fit 1.0), not
            # only the minimum when the round begins before the learners are there.
            need = max(self.min_available_clients, self.min_fit_clients)
            instructions = self.sample(
                server_round, "training", need, client_manager,
                lambda: super(FLOpsFedAvg, self).configure_fit(server_round, parameters, client_manager),
            )
            if instructions:
                self.count(server_round)["clients"] = client_manager.num_available()
                log.info("round %d: training on %d of %d connected %s", server_round,
                         len(instructions), client_manager.num_available(), peers)
                if tracker is not None:
                    try:
                        tracker.start_round(server_round, {k: getattr(self, k) for k in LOGGED_STRATEGY_PARAMS})
                    except Exception as e:  # noqa: BLE001
                        self.fail(server_round, e)
                        return []
            return instructions

        def aggregate_fit(self, server_round, results, failures):
            if self.error is not None:
                return None, {}
            counts = self.count(server_round)
            counts["fit_results"], counts["fit_failures"] = len(results), len(failures)
            if not results:
                self.fail(server_round, AggregatorError(
                    f"no training result: {failed_peers('training', results, failures)}; {hint}"))
                return None, {}
            if failures:
                self.tolerate(server_round, "training", results, failures)
            try:
                aggregated, metrics = super().aggregate_fit(server_round, results, failures)
                if aggregated is None:
                    raise AggregatorError("no training results to aggregate")
                self.parameters = parameters_to_ndarrays(aggregated)
                self.training_examples += sum(res.num_examples for _, res in results)
                if metrics.get(flops_signature.METRIC):
                    self.input_schema = metrics[flops_signature.METRIC]
                    if tracker is not None:
                        tracker.input_schema = self.input_schema
                if self.model_manager is not None:
                    # The model follows the aggregate (it is what gets saved as the best model).
                    model_call(
                        "ModelManager.set_model_parameters()",
                        self.model_manager.set_model_parameters,
                        [np.copy(p) for p in self.parameters],
                    )
                return aggregated, metrics
            except Exception as e:  # noqa: BLE001
                self.fail(server_round, e)
                return None, {}

        def configure_evaluate(self, server_round, parameters, client_manager):
            if self.error is not None:
                return []
            if self.fraction_evaluate == 0.0:
                self.end_round(server_round, None, None)
                return []
            need = max(self.min_available_clients, self.min_evaluate_clients, 1)
            return self.sample(
                server_round, "evaluation", need, client_manager,
                lambda: super(FLOpsFedAvg, self).configure_evaluate(server_round, parameters, client_manager),
            )

        def end_round(self, server_round, loss, accuracy):
            if tracker is not None:
                try:
                    tracker.end_round(server_round, loss, accuracy, self.count(server_round))
                except Exception as e:  # noqa: BLE001
                    self.fail(server_round, e)

        def aggregate_evaluate(self, server_round, results, failures):
            if self.error is not None:
                return None, {}
            counts = self.count(server_round)
            counts["evaluate_results"], counts["evaluate_failures"] = len(results), len(failures)
            if failures:
                self.tolerate(server_round, "evaluation", results, failures)
            if not results:
                # The round trained (its aggregate stands) but has no metrics.
                log.warning("round %d: no evaluation results", server_round)
                self.end_round(server_round, None, None)
                return None, {}
            try:
                n = sum(res.num_examples for _, res in results)
                if n <= 0:
                    raise AggregatorError("the learners evaluated on 0 examples")
                try:
                    accuracy = sum(float(res.metrics["accuracy"]) * res.num_examples for _, res in results) / n
                except KeyError:
                    raise AggregatorError("a learner's evaluation result lacks the 'accuracy' metric") from None
                loss = sum(float(res.loss) * res.num_examples for _, res in results) / n
                if not (math.isfinite(loss) and math.isfinite(accuracy)):
                    log.warning("round %d: loss %s, accuracy %s are not finite", server_round, loss, accuracy)
                self.rounds.append((server_round, loss, accuracy, n))
                log.info("round %d: loss %.6g, accuracy %.6g (%d examples)", server_round, loss, accuracy, n)
                self.end_round(server_round, loss, accuracy)
                if self.error is not None:
                    return None, {}
                return loss, {"accuracy": accuracy}
            except Exception as e:  # noqa: BLE001
                self.fail(server_round, e)
                return None, {}

    return FLOpsFedAvg()


def run_rounds(args, prepare, tracker=None, on_started=None, notifier=None):
    """One Flower server session of `training_iterations` rounds; returns the strategy.

    `prepare`: see make_strategy()."""
    import flwr

    guard_client_registration()
    client_manager = make_client_manager(args)
    strategy = make_strategy(args, prepare, tracker, notifier)
    strategy.on_started = on_started
    address = grpc_address("0.0.0.0", server_port())
    log.info("Flower server on %s: %d round(s), FedAvg", address, args.training_iterations)
    flwr.server.start_server(
        server_address=address,
        config=flwr.server.ServerConfig(num_rounds=args.training_iterations),
        strategy=strategy,
        client_manager=client_manager,
    )
    if strategy.error is not None:
        raise strategy.error
    if not strategy.rounds:
        peers, _ = peer_words(args)
        raise AggregatorError(
            f"no round produced evaluation results ({args.training_iterations} round(s); "
            f"did {args.min_available_clients} {peers} connect?)"
        )
    return strategy


# ---------------------------------------------------------------------------------------------
# MLflow


def check_tracking_server(url: str) -> None:
    """Fails within seconds when the server is unreachable (MLflow's client retries for minutes)."""
    import requests

    wait = env_number("FLOPS_TRACKING_SERVER_WAIT", 10.0)
    deadline = time.monotonic() + wait
    while True:
        try:
            r = requests.get(f"{url}/health", timeout=5)
            if r.status_code < 500:
                return
            problem = f"HTTP {r.status_code} from {url}/health"
        except requests.RequestException as e:
            problem = f"{type(e).__name__}: {e}"
        if time.monotonic() + 2 > deadline:
            raise AggregatorError(
                f"the MLflow tracking server {url} is unreachable ({problem}); check the URL and that "
                "the server runs"
            )
        time.sleep(2)


class Tracker:
    """One MLflow run per round; the best round's model is logged to its run at the end."""

    def __init__(self, args):
        self.flavor = self.model_manager = None
        self.url = args.mlflow_tracking_server_url
        self.local = args.track_locally
        self.uri = "file://" + os.path.abspath("mlruns") if self.local else self.url
        self.experiment_name = f"FLOps Project {args.flops_project_id}"
        self.experiment_id = None
        self.best = None  # (round, loss, accuracy, run_id, saved model dir)
        self.tmp = None
        self.requirements = None  # the first saved model's requirements.txt
        self.input_schema = None  # the learners' (flops_signature.py), set by the strategy

    @property
    def where(self) -> str:
        return f"the local MLflow store {self.uri}" if self.local else f"the MLflow tracking server {self.url}"

    def mlflow_error(self, e: Exception) -> AggregatorError:
        return AggregatorError(f"MLflow failed at {self.where}: {type(e).__name__}: {e}")

    def check(self) -> None:
        if not self.local:
            check_tracking_server(self.url)

    def open(self, flavor, model_manager) -> None:
        self.flavor, self.model_manager = flavor, model_manager
        self.tmp = tempfile.mkdtemp(prefix="flops-aggregator-")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true")
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        try:
            self.experiment_id = mlflow.set_experiment(self.experiment_name).experiment_id
        except Exception as e:  # noqa: BLE001
            raise AggregatorError(
                f"{self.where} refused the experiment {self.experiment_name!r}: {type(e).__name__}: {e}"
            ) from e

    def start_round(self, server_round: int, params: dict) -> None:
        import mlflow

        try:
            if mlflow.active_run():
                mlflow.end_run()
            mlflow.start_run(experiment_id=self.experiment_id, run_name=f"FLOps FL round {server_round}")
            mlflow.log_params(params)
        except Exception as e:  # noqa: BLE001
            raise self.mlflow_error(e) from e

    def end_round(self, server_round: int, loss, accuracy, counts: dict) -> None:
        """Ends the round's run: its metrics, the clients' results and failures (counted), and the
        model if it is the best so far. A round without evaluation results has no loss/accuracy."""
        import mlflow

        metrics = {k: counts[k] for k in ROUND_COUNT_METRICS}
        if loss is not None:
            metrics.update(loss=loss, accuracy=accuracy)
        try:
            mlflow.log_metrics(metrics)
            run_id = mlflow.active_run().info.run_id
        except Exception as e:  # noqa: BLE001
            raise self.mlflow_error(e) from e
        if loss is not None and (self.best is None or (accuracy > self.best[2] and loss < self.best[1])):
            # Saved now, while the ModelManager holds this round's aggregate, and uploaded after
            # the last round: a model the flavor cannot save fails in round 1, not at the end.
            path = os.path.join(self.tmp, f"round-{server_round}")
            model = model_call("ModelManager.get_model()", self.model_manager.get_model)
            # MLflow infers the model's pip requirements in a subprocess that loads the model
            # (10+ s); the same model class in the same env needs the same ones every round.
            reuse = {"pip_requirements": self.requirements} if self.requirements else {}
            # No input_example: the signature alone makes the scoring server cast requests, the
            # aggregator has no data (zeros at best), and newer MLflow runs the model on an example.
            signature = flops_signature.signature(self.input_schema)
            try:
                self.flavor.save_model(model, path, code_paths=repo_code_paths() or None,
                                       signature=signature, **reuse)
            except Exception as e:  # noqa: BLE001
                raise AggregatorError(
                    f"mlflow.{self.flavor.__name__.rsplit('.', 1)[-1]}.save_model() failed for the "
                    f"ML repo's model (ModelManager.get_model()): {type(e).__name__}: {e}"
                ) from e
            if self.requirements is None and os.path.isfile(os.path.join(path, "requirements.txt")):
                self.requirements = os.path.join(self.tmp, "requirements.txt")
                shutil.copyfile(os.path.join(path, "requirements.txt"), self.requirements)
            if self.best is not None:
                shutil.rmtree(self.best[4], ignore_errors=True)
            self.best = (server_round, loss, accuracy, run_id, path)
            log.info("round %d has the best model so far", server_round)
        try:
            mlflow.end_run()
        except Exception as e:  # noqa: BLE001
            raise self.mlflow_error(e) from e

    def abort(self) -> None:
        if "mlflow" not in sys.modules:
            return  # nothing opened (a failure before MLflow's import): no run to mark
        import mlflow

        try:
            if mlflow.active_run():
                mlflow.end_run(status="FAILED")
        except Exception as e:  # noqa: BLE001
            log.warning("could not mark the MLflow run as failed: %s", e)

    def finish(self):
        """Logs the best model to its round's run; returns (round, loss, accuracy, run_id)."""
        from mlflow.models import Model
        from mlflow.tracking import MlflowClient

        server_round, loss, accuracy, run_id, path = self.best
        # The MLmodel names its run, as log_model would have written it.
        try:
            mlmodel = Model.load(path)
            mlmodel.run_id, mlmodel.artifact_path = run_id, MODEL_ARTIFACT_PATH
            if mlmodel.signature is None:  # saved before the learners' schema came
                mlmodel.signature = flops_signature.signature(self.input_schema)
            mlmodel.save(os.path.join(path, "MLmodel"))
        except Exception as e:  # noqa: BLE001
            log.warning("could not record the run in the model's MLmodel: %s", e)
            mlmodel = None
        write_environment(os.path.join(path, ENVIRONMENT_FILE))
        client = MlflowClient(self.uri)
        try:
            client.log_artifacts(run_id, path, MODEL_ARTIFACT_PATH)
        except Exception as e:  # noqa: BLE001
            raise AggregatorError(
                f"could not upload the best model (round {server_round}) to {self.where}: {type(e).__name__}: {e}"
            ) from e
        if mlmodel is not None:
            try:
                # The run's `mlflow.log-model.history` tag: the MLflow UI lists the model.
                client._record_logged_model(run_id, mlmodel)
            except Exception as e:  # noqa: BLE001 - cosmetic (a private MLflow API)
                log.warning("could not record the logged model on run %s: %s", run_id, e)
        log.info("best model (round %d) logged to run %s under %s", server_round, run_id, MODEL_ARTIFACT_PATH)
        if mlmodel is not None:
            log.info("%s", flops_signature.describe(mlmodel.signature, self.input_schema))
        return server_round, loss, accuracy, run_id

    def close(self) -> None:
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Classic and root aggregator

START_MSG = """Start Aggregator activities - Start Federated Learning:
Visit the page below to observe your (active) FLOps Project.
(Note: There you can observe the progress in real time.)
 '{}'"""


def run_classic(args, notifier: Notifier) -> None:
    tracker = Tracker(args)
    # First, as it takes seconds and nothing listens yet: importing MLflow and the model code
    # takes many more, and happens with Flower's server already up (make_strategy()).
    tracker.check()

    def prepare():
        model_manager = load_model_manager()
        initial = initial_ndarrays(model_manager)
        flavor = flavor_module()
        log.info("model code and %s imported", flavor.__name__)
        tracker.open(flavor, model_manager)
        return initial, model_manager

    try:

        def started():
            notifier.observe(START_MSG.format(tracker.uri))
            notifier.publish("started")

        strategy = run_rounds(args, prepare, tracker, on_started=started, notifier=notifier)
        server_round, loss, accuracy, run_id = tracker.finish()
    finally:
        tracker.abort()
        tracker.close()
    rounds = strategy.round_counts()
    notifier.publish(
        "success", accuracy=accuracy, loss=loss, experiment_id=tracker.experiment_id, run_id=run_id,
        rounds=rounds,
    )
    notifier.observe(
        "\n".join(
            (
                "Aggregator tasks completed successfully.",
                f"The best performing model (round {server_round}):",
                f"- accuracy: {accuracy}",
                f"- loss: {loss}",
                f"- experiment_id: {tracker.experiment_id}",
                f"- run_id: {run_id}",
                "- failed clients per round (training/evaluation): "
                + ", ".join(f"{r['fit_failures']}/{r['evaluate_failures']}" for r in rounds),
                f"({args.aggregator_type})",
            )
        )
    )


# ---------------------------------------------------------------------------------------------
# Cluster aggregator (hierarchical FL)


def is_unavailable(err: BaseException) -> bool:
    import grpc

    return isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAVAILABLE


class AttemptResources:
    """Every gRPC channel and request stream one start_client call opens, to close after it.

    The learner runtime's class of the same name (this image does not hold that runtime): flwr's
    grpc-bidi connection (flwr 1.8 to 1.25) closes its channel but never ends the request stream
    it feeds from a queue, so gRPC's thread reading that queue waits for good, one per attempt.
    Channels are closed again (no-op when flwr did) and each queue gets its end marker.
    """

    MODULES = ("flwr.client.grpc_client.connection", "flwr.compat.client.grpc_client.connection")

    def __init__(self):
        import importlib

        self.channels, self.queues = [], []
        patched = 0
        for name in self.MODULES:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, "create_channel") and hasattr(module, "Queue"):
                self.track(module)
                patched += 1
        if not patched:
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
            except Exception as e:  # noqa: BLE001
                log.debug("closing a gRPC channel: %s", e)
        while self.queues:
            q = self.queues.pop()
            try:
                while True:
                    q.get_nowait()
            except queue.Empty:
                pass
            q.put_nowait(None)  # iter(queue.get, None) ends: so does gRPC's reading thread


def make_cluster_client(args):
    import flwr
    import numpy as np

    class ClusterAggregator(flwr.client.NumPyClient):
        """The root's client: one `fit` is one cycle of this cluster's own FL rounds."""

        def __init__(self):
            self.cycles = 0
            self.last = None  # the last cycle's strategy

        def get_parameters(self, config):
            # Only asked when the root has no initial parameters (FLOps roots always have).
            return initial_ndarrays(load_model_manager())

        def fit(self, parameters, config):
            self.cycles += 1
            log.info("cycle %d: training with this cluster's learners", self.cycles)
            initial = [np.asarray(p) for p in parameters]
            self.last = run_rounds(args, lambda: (initial, None))
            log.info("cycle %d done: %d training examples", self.cycles, self.last.training_examples)
            # The cycle's input schema goes on to the root, whose model gets the signature.
            metrics = flops_signature.metrics(self.last.input_schema)
            return self.last.parameters, int(self.last.training_examples), metrics

        def evaluate(self, parameters, config):
            # The cluster has no data of its own: it reports the cycle's evaluation by its learners.
            if self.last is None:
                raise AggregatorError("evaluate before any training cycle")
            rounds = self.last.rounds
            loss = sum(r[1] for r in rounds) / len(rounds)
            accuracy = sum(r[2] for r in rounds) / len(rounds)
            return float(loss), int(sum(r[3] for r in rounds)), {"accuracy": float(accuracy)}

    return ClusterAggregator()


def run_cluster(args) -> None:
    """Serves the root aggregator until stopped; reconnects whenever the root goes away."""
    import flwr

    delay = env_number("FLOPS_AGGREGATOR_RETRY_DELAY", 5.0)
    host, port = split_host_port(args.root_aggregator_ip, AGGREGATOR_PORT)
    root = grpc_address(host, port)
    server_port()  # a bad FLOPS_AGGREGATOR_PORT fails now, not in the first cycle
    client = make_cluster_client(args)
    resources = AttemptResources()
    waiting = False
    while True:
        try:
            # start_numpy_client(client) is start_client(client.to_client()) plus a
            # deprecation warning, which would repeat on every attempt. A loop of our own, not
            # start_client's max_retries/max_wait_time: the grpc-bidi transport ignores them
            # (flwr 1.8 to 1.25), and the cluster aggregator must reconnect after every
            # session and every failed cycle, for as long as it runs.
            flwr.client.start_client(server_address=root, client=client.to_client(), insecure=True)
            log.info("the root aggregator %s ended the session; waiting for the next one", root)
            waiting = False
        except Exception as e:  # noqa: BLE001 - the cluster aggregator outlives any session
            if is_unavailable(e):
                if not waiting:
                    log.info("root aggregator %s unavailable; retrying every %.1f s", root, delay)
                waiting = True
            else:
                log.error("session with the root aggregator %s failed: %s: %s", root, type(e).__name__, e)
                waiting = False
        finally:
            resources.close()
        time.sleep(delay)


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    # Our own handler: flwr logs through its own, and the root logger would repeat those lines.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s flops-aggregator %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    log.info("runtime started")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # model_manager.py sits in the working directory (the image's WORKDIR, beside main.py).
    sys.path.insert(0, os.getcwd())
    notifier = Notifier(args)
    try:
        validate(args)
        if args.aggregator_type == "CLUSTER_AGGREGATOR":
            run_cluster(args)
        else:
            run_classic(args, notifier)
        return 0
    except (Exception, SystemExit, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure is reported
        if isinstance(e, SystemExit) and e.code in (0, None):
            return 0
        if isinstance(e, AggregatorError):
            msg = str(e)
        elif isinstance(e, SystemExit):
            msg = f"exit {e.code}"
        else:
            msg = f"{type(e).__name__}: {e}"
        msg = f"{args.aggregator_type} failed: {msg}"
        log.error("%s", msg, exc_info=not isinstance(e, (AggregatorError, SystemExit)))
        if args.aggregator_type != "CLUSTER_AGGREGATOR":
            notifier.publish("failed", error_msg=msg)
            notifier.observe(f"aggregator of FLOps project {args.flops_project_id}: {msg}")
        return 1


if __name__ == "__main__":
    code = main()
    if code:
        # A Flower server that died mid-round leaves gRPC worker threads behind, which would
        # keep the interpreter from exiting: leave at once (the failure is already reported).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
