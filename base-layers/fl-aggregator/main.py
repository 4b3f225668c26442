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
                      artifact path `logged_model_artifact`.
  ROOT_AGGREGATOR     the same, with cluster aggregators as its clients; a round is a cycle.
  CLUSTER_AGGREGATOR  a Flower client of <root_aggregator_ip>: each `fit` from the root runs a
                      whole cycle (<training_iterations> rounds) with this cluster's learners on
                      its own Flower server (0.0.0.0:8080), starting from the root's parameters,
                      and returns the result and the number of training examples the cycle used
                      (summed over its rounds); `evaluate` returns the cycle's mean loss and
                      accuracy over its rounds and its evaluation examples. No MLflow, no MQTT:
                      it only logs. It runs until stopped, reconnecting whenever the root goes
                      away or a cycle fails (the root then reports the failure).

--track-locally logs to a local MLflow file store (./mlruns) instead of the tracking server.
--deactivate-notifications sends nothing to the MQTT broker and the project observer.

Notifications (classic and root; MQTT QoS 1, JSON, waiting for the broker's acknowledgement):
  flops_manager/aggregator/started  {flops_project_id, aggregator_type} once the server listens
  flops_manager/aggregator/success  {flops_project_id, aggregator_type, accuracy, loss,
                                     experiment_id, run_id}: the best round's metrics and run,
                                     which holds `logged_model_artifact`
  flops_manager/aggregator/failed   {flops_project_id, aggregator_type, error_msg}
and plain-text messages to the project observer (one per TCP connection): started (with the
tracking URL), the best model's accuracy and loss, failures. An unreachable broker or observer
only logs a warning.

Exit codes: 0 done; 1 failed (reported as above: a bad argument, an unreachable tracking server,
the model code raising, a learner failing in a round, MLflow failing); 2 unusable command line.

Environment:
  ML_MODEL_FLAVOR                  sklearn, pytorch, tensorflow or keras (set in the image)
  FLOPS_AGGREGATOR_PORT            port of this aggregator's Flower server (default 8080)
  FLOPS_AGGREGATOR_RETRY_DELAY     cluster aggregator: seconds between attempts to reach the
                                   root aggregator (default 5)
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

MQTT_PORT = 9027
OBSERVER_PORT = 2727
AGGREGATOR_PORT = 8080
TOPIC = "flops_manager/aggregator/{}"
MODEL_ARTIFACT_PATH = "logged_model_artifact"
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
    paths = []
    for name in sorted(os.listdir(os.getcwd())):
        path = os.path.abspath(name)
        if name.startswith((".", "__")) or path == here:
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


def make_strategy(args, initial, model_manager=None, tracker=None):
    """FedAvg that stops cleanly at the first failure and reports every round to `tracker`.

    Flower's legacy start_server leaves its gRPC server running when the strategy raises, so a
    failure is recorded instead and every later round is cancelled (configure_* return no
    clients); start_server then ends normally and run_rounds() raises the recorded error.
    """
    import flwr
    import numpy as np
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    if args.aggregator_type == "ROOT_AGGREGATOR":
        peers, hint = "cluster aggregator(s)", "see the cluster aggregators' logs"
    else:
        peers, hint = "learner(s)", "the learners report their own errors on flops_manager/learner/failed"

    def failed_peers(what, results, failures):
        return AggregatorError(
            f"{len(failures)} of {len(results) + len(failures)} {peers} failed in {what} "
            f"({describe_failures(failures)}); {hint}"
        )

    class FLOpsFedAvg(flwr.server.strategy.FedAvg):
        def __init__(self):
            super().__init__(
                min_available_clients=args.min_available_clients,
                min_fit_clients=args.min_fit_clients,
                min_evaluate_clients=args.min_evaluate_clients,
                initial_parameters=ndarrays_to_parameters(initial),
            )
            self.error = None
            self.on_started = None
            self.parameters = list(initial)  # the latest aggregate, as NumPy arrays
            self.rounds = []  # (round, loss, accuracy, evaluation examples)
            self.training_examples = 0

        def fail(self, server_round, err):
            if self.error is None:
                msg = str(err) if isinstance(err, AggregatorError) else f"{type(err).__name__}: {err}"
                self.error = AggregatorError(f"round {server_round}: {msg}")
                log.error("%s; cancelling the remaining rounds", self.error)
                if tracker is not None:
                    tracker.abort()

        def initialize_parameters(self, client_manager):
            # Called once the gRPC server listens: the moment to announce the start.
            if self.on_started is not None:
                self.on_started()
            return super().initialize_parameters(client_manager)

        def configure_fit(self, server_round, parameters, client_manager):
            if self.error is not None:
                return []
            if tracker is not None:
                try:
                    tracker.start_round(server_round, {k: getattr(self, k) for k in LOGGED_STRATEGY_PARAMS})
                except Exception as e:  # noqa: BLE001
                    self.fail(server_round, e)
                    return []
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            if self.error is not None:
                return None, {}
            if failures:
                self.fail(server_round, failed_peers("training", results, failures))
                return None, {}
            try:
                aggregated, metrics = super().aggregate_fit(server_round, results, failures)
                if aggregated is None:
                    raise AggregatorError("no training results to aggregate")
                self.parameters = parameters_to_ndarrays(aggregated)
                self.training_examples += sum(res.num_examples for _, res in results)
                if model_manager is not None:
                    # The model follows the aggregate (it is what gets saved as the best model).
                    model_call(
                        "ModelManager.set_model_parameters()",
                        model_manager.set_model_parameters,
                        [np.copy(p) for p in self.parameters],
                    )
                return aggregated, metrics
            except Exception as e:  # noqa: BLE001
                self.fail(server_round, e)
                return None, {}

        def configure_evaluate(self, server_round, parameters, client_manager):
            if self.error is not None:
                return []
            return super().configure_evaluate(server_round, parameters, client_manager)

        def aggregate_evaluate(self, server_round, results, failures):
            if self.error is not None:
                return None, {}
            if failures:
                self.fail(server_round, failed_peers("evaluation", results, failures))
                return None, {}
            if not results:
                log.warning("round %d: no evaluation results", server_round)
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
                if tracker is not None:
                    tracker.end_round(server_round, loss, accuracy)
                return loss, {"accuracy": accuracy}
            except Exception as e:  # noqa: BLE001
                self.fail(server_round, e)
                return None, {}

    return FLOpsFedAvg()


def run_rounds(args, initial, model_manager=None, tracker=None, on_started=None):
    """One Flower server session of `training_iterations` rounds; returns the strategy."""
    import flwr

    strategy = make_strategy(args, initial, model_manager, tracker)
    strategy.on_started = on_started
    address = grpc_address("0.0.0.0", server_port())
    log.info("Flower server on %s: %d round(s), FedAvg", address, args.training_iterations)
    flwr.server.start_server(
        server_address=address,
        config=flwr.server.ServerConfig(num_rounds=args.training_iterations),
        strategy=strategy,
    )
    if strategy.error is not None:
        raise strategy.error
    if not strategy.rounds:
        raise AggregatorError(
            f"no round produced evaluation results ({args.training_iterations} round(s); "
            f"did {args.min_available_clients} "
            f"{'cluster aggregator(s)' if args.aggregator_type == 'ROOT_AGGREGATOR' else 'learner(s)'} connect?)"
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

    def end_round(self, server_round: int, loss: float, accuracy: float) -> None:
        import mlflow

        try:
            mlflow.log_metrics({"loss": loss, "accuracy": accuracy})
            run_id = mlflow.active_run().info.run_id
        except Exception as e:  # noqa: BLE001
            raise self.mlflow_error(e) from e
        if self.best is None or (accuracy > self.best[2] and loss < self.best[1]):
            # Saved now, while the ModelManager holds this round's aggregate, and uploaded after
            # the last round: a model the flavor cannot save fails in round 1, not at the end.
            path = os.path.join(self.tmp, f"round-{server_round}")
            model = model_call("ModelManager.get_model()", self.model_manager.get_model)
            # MLflow infers the model's pip requirements in a subprocess that loads the model
            # (10+ s); the same model class in the same env needs the same ones every round.
            reuse = {"pip_requirements": self.requirements} if self.requirements else {}
            try:
                self.flavor.save_model(model, path, code_paths=repo_code_paths() or None, **reuse)
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
            mlmodel.save(os.path.join(path, "MLmodel"))
        except Exception as e:  # noqa: BLE001
            log.warning("could not record the run in the model's MLmodel: %s", e)
            mlmodel = None
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
    # First, as it takes seconds: importing MLflow and the model code takes many more.
    tracker.check()
    model_manager = load_model_manager()
    initial = initial_ndarrays(model_manager)
    flavor = flavor_module()
    try:
        tracker.open(flavor, model_manager)

        def started():
            notifier.observe(START_MSG.format(tracker.uri))
            notifier.publish("started")

        run_rounds(args, initial, model_manager, tracker, on_started=started)
        server_round, loss, accuracy, run_id = tracker.finish()
    finally:
        tracker.abort()
        tracker.close()
    notifier.publish(
        "success", accuracy=accuracy, loss=loss, experiment_id=tracker.experiment_id, run_id=run_id
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
                f"({args.aggregator_type})",
            )
        )
    )


# ---------------------------------------------------------------------------------------------
# Cluster aggregator (hierarchical FL)


def is_unavailable(err: BaseException) -> bool:
    import grpc

    return isinstance(err, grpc.RpcError) and err.code() == grpc.StatusCode.UNAVAILABLE


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
            self.last = run_rounds(args, [np.asarray(p) for p in parameters])
            log.info("cycle %d done: %d training examples", self.cycles, self.last.training_examples)
            return self.last.parameters, int(self.last.training_examples), {}

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
    waiting = False
    while True:
        try:
            # start_numpy_client(client) is start_client(client.to_client()) plus a
            # deprecation warning, which would repeat on every attempt.
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
        time.sleep(delay)


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    # Our own handler: flwr logs through its own, and the root logger would repeat those lines.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s flops-aggregator %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
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
