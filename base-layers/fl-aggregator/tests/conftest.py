"""Real peers for the aggregator's tests, all on 127.0.0.1: the rig's MLflow tracking server and
mosquitto (`scripts/rig.sh services`), learners (the FL learner runtime, base-layers/fl-learner,
as subprocesses) and an Arrow Flight data server (the learner tests' flight_server.py) serving
this suite's own tables."""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow
import pytest

HERE = Path(__file__).resolve().parent
RUNTIME = HERE.parent
LEARNER = RUNTIME.parent / "fl-learner"
# Appended: `conftest` must stay this directory's.
sys.path.append(str(LEARNER / "tests"))

import flight_server  # noqa: E402
from peers import free_port, project_observer, wait_for  # noqa: E402,F401

MQTT = ("127.0.0.1", 9027)
MLFLOW = "http://127.0.0.1:5080"
SERVICES_HINT = "start it with `scripts/rig.sh services`"


@pytest.fixture(scope="session", autouse=True)
def services():
    """The rig's services must run: a missing one fails every test (never skips)."""
    import requests

    try:
        socket.create_connection(MQTT, timeout=2).close()
    except OSError:
        pytest.fail(f"no MQTT broker on {MQTT[0]}:{MQTT[1]}; {SERVICES_HINT}")
    try:
        requests.get(f"{MLFLOW}/health", timeout=5).raise_for_status()
    except requests.RequestException as e:
        pytest.fail(f"no MLflow tracking server at {MLFLOW} ({e}); {SERVICES_HINT}")


@pytest.fixture(scope="session")
def extra_path(tmp_path_factory) -> str:
    """A PYTHONPATH entry with scikit-learn (tests/test-requirements.txt) when the env lacks it.

    The FL runtimes' envs hold only their own requirements; scikit-learn is this suite's ML
    repo's dependency. It is installed with uv for the env's Python and NumPy (whose copy is
    then removed so the env's own stays the one imported)."""
    if importlib.util.find_spec("sklearn") is not None:
        return ""
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("scikit-learn is missing and uv is not installed to add it; run `scripts/rig.sh install`")
    target = tmp_path_factory.mktemp("test-deps")
    numpy_pin = f"numpy=={importlib.metadata.version('numpy')}"
    cmd = [uv, "pip", "install", "--quiet", "--python", sys.executable, "--target", str(target),
           "-r", str(HERE / "test-requirements.txt"), numpy_pin]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"could not install the test requirements ({' '.join(cmd)}):\n{done.stderr}")
    for p in target.glob("numpy*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    sys.path.append(str(target))
    return str(target)


def table(n: int, seed: int) -> pyarrow.Table:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    label = (x1 + 0.5 * x2 + 0.3 * rng.normal(size=n) > 0).astype(np.int64)
    return pyarrow.table({"x1": x1, "x2": x2, "label": label})


@pytest.fixture(scope="session")
def data_server():
    """The learners' ML data server: tags agg-a, agg-b, agg-c (our own tables)."""
    port = free_port()
    tables = {"agg-a": table(300, 11), "agg-b": table(300, 12), "agg-c": table(300, 13)}
    server = flight_server.DataServer(f"grpc+tcp://127.0.0.1:{port}", tables)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    yield ("127.0.0.1", port)
    server.shutdown()


# The ML repo: scikit-learn logistic regression on (x1, x2) -> label, as in Flower's sklearn
# example. TEST_MODEL_FAIL makes one of its methods raise. The model is fed float32 arrays
# (datasets' numpy format makes float32 of float64 columns), or with TEST_INPUT=dataframe a pandas
# DataFrame (x1, x2): the input schema the learners send. Learners' fits can be held at a known
# point (a line on stdout says so): with TEST_FIT_GATE=<path>, the fits numbered in
# TEST_FIT_GATE_AT (comma-separated, default 1) wait until the file <path>-<n> exists;
# TEST_FIT_HANG_AT=<n> makes fit number n hang until the learner is killed.
MODEL_MANAGER = textwrap.dedent(
    '''
    import os
    import time
    import warnings

    import numpy as np
    from flops_utils.ml_repo_building_blocks import load_dataset
    from flops_utils.ml_repo_templates import ModelManagerTemplate
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    FAIL = os.environ.get("TEST_MODEL_FAIL", "")


    class Classifier:
        """A model class of the repo's own (TEST_MODEL_WRAP=1): pickled by reference."""

        def __init__(self, model):
            self.model = model

        def predict(self, x):
            return self.model.predict(x)


    class ModelManager(ModelManagerTemplate):
        def __init__(self):
            if FAIL == "init":
                raise RuntimeError("the model cannot be built")
            # One solver step per round: the model improves over several rounds.
            self.model = LogisticRegression(max_iter=1, warm_start=True)
            # An unfitted sklearn model has no parameters; FL needs them from the start.
            self.model.classes_ = np.array([0, 1])
            self.model.coef_ = np.zeros((1, 2))
            self.model.intercept_ = np.zeros(1)

        def set_model_data(self):
            d = load_dataset().with_format("numpy")
            x = np.stack([d["x1"], d["x2"]], axis=1)
            if os.environ.get("TEST_INPUT") == "dataframe":
                import pandas as pd

                x = pd.DataFrame({"x1": x[:, 0], "x2": x[:, 1]})
            y = np.asarray(d["label"])
            cut = int(len(x) * 0.8)
            self.train, self.test = (x[:cut], y[:cut]), (x[cut:], y[cut:])

        def get_model(self):
            return Classifier(self.model) if os.environ.get("TEST_MODEL_WRAP") else self.model

        def get_model_parameters(self):
            return [self.model.coef_, self.model.intercept_]

        def set_model_parameters(self, parameters):
            if FAIL == "set_model_parameters":
                raise ValueError("these parameters do not fit the model")
            self.model.coef_, self.model.intercept_ = parameters[0], parameters[1]

        fits = 0

        def fit_model(self):
            if FAIL == "fit_model":
                raise RuntimeError("training diverged")
            self.fits += 1
            if self.fits == int(os.environ.get("TEST_FIT_HANG_AT", "0")):
                print("FIT_HANG", self.fits, flush=True)
                while True:
                    time.sleep(60)
            gated = os.environ.get("TEST_FIT_GATE_AT", "1").split(",")
            if os.environ.get("TEST_FIT_GATE") and str(self.fits) in gated:
                gate = f"{os.environ['TEST_FIT_GATE']}-{self.fits}"
                print("FIT_GATE waiting", self.fits, flush=True)
                end = time.monotonic() + 300
                while not os.path.exists(gate):
                    if time.monotonic() > end:
                        raise RuntimeError(f"the test never opened {gate}")
                    time.sleep(0.05)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning: few iterations per round
                self.model.fit(*self.train)
            return len(self.train[0])

        def evaluate_model(self):
            x, y = self.test
            loss = log_loss(y, self.model.predict_proba(x), labels=[0, 1])
            return float(loss), float(self.model.score(x, y)), len(x)
    '''
)


@pytest.fixture
def ml_repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "model_manager.py").write_text(MODEL_MANAGER)
    return repo


class Proc:
    """A subprocess whose output goes to a file (no pipe to fill up and block it)."""

    def __init__(self, name, cmd, cwd, env, log_dir):
        self.name = name
        self.log = log_dir / f"{name}.log"
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def expect(self, text: str, timeout: float, count: int = 1) -> None:
        """Waits until `text` is in the output `count` times; fails at once if the process exits."""
        wait_for(lambda: self.output().count(text) >= count or not self.alive(), timeout)
        out = self.output()
        assert out.count(text) >= count, (
            f"{self.name}: {text!r} not seen {count} time(s) in {timeout} s "
            f"({'running' if self.alive() else f'exit {self.popen.returncode}'}):\n{out[-6000:]}"
        )

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait(10)

    def wait(self, timeout) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still runs after {timeout} s:\n{self.output()[-6000:]}") from None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)


@pytest.fixture
def fl(tmp_path, extra_path, data_server, ml_repo):
    """Starts aggregators and learners for one test (ports, env, project id); kills what is left."""

    class FL:
        project_id = f"agg-test-{uuid.uuid4().hex[:10]}"
        repo = ml_repo
        procs = []

        def env(self, **extra):
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, env.get("PYTHONPATH", "")) if p)
            env.update(
                {
                    "PYTHONUNBUFFERED": "1",
                    "FLWR_TELEMETRY_ENABLED": "0",
                    "ML_MODEL_FLAVOR": "sklearn",
                    "ML_DATA_SERVER_HOST": data_server[0],
                    "ML_DATA_SERVER_PORT": str(data_server[1]),
                    "FLOPS_LEARNER_RETRY_DELAY": "0.5",
                    "FLOPS_AGGREGATOR_RETRY_DELAY": "0.5",
                }
            )
            env.update({k: str(v) for k, v in extra.items()})
            return env

        def aggregator(self, name, args, port, observer="127.0.0.1:9", tracking=MLFLOW,
                       mqtt=f"{MQTT[0]}:{MQTT[1]}", **env):
            cmd = [sys.executable, str(RUNTIME / "main.py"), self.project_id, mqtt, observer, tracking,
                   *map(str, args)]
            p = Proc(name, cmd, self.repo, self.env(FLOPS_AGGREGATOR_PORT=port, **env), tmp_path)
            self.procs.append(p)
            return p

        def learner(self, name, aggregator_port, tag, sessions=1, **env):
            cmd = [sys.executable, str(LEARNER / "main.py"), self.project_id, f"{MQTT[0]}:{MQTT[1]}",
                   "127.0.0.1:9", f"127.0.0.1:{aggregator_port}", tag]
            p = Proc(name, cmd, self.repo, self.env(FLOPS_LEARNER_MAX_SESSIONS=sessions, **env), tmp_path)
            self.procs.append(p)
            return p

        def logs(self) -> str:
            return "\n".join(f"----- {p.name}\n{p.output()[-5000:]}" for p in self.procs)

    fl = FL()
    yield fl
    for p in fl.procs:
        p.stop()


@pytest.fixture
def mqtt_messages():
    """Every flops_manager/# message on the rig's mosquitto, as (topic, payload) in arrival order."""
    import paho.mqtt.client as mqtt

    got, ready = [], threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *a: c.subscribe("flops_manager/#", qos=1)
    client.on_subscribe = lambda *a: ready.set()

    def on_message(c, u, m):
        try:
            got.append((m.topic, json.loads(m.payload)))
        except ValueError:
            got.append((m.topic, {"raw": m.payload.decode(errors="replace")}))

    client.on_message = on_message
    client.connect(*MQTT)
    client.loop_start()
    assert ready.wait(5), "MQTT subscription was not acknowledged"
    yield got
    client.disconnect()
    client.loop_stop()


def messages_of(got, project_id, prefix="flops_manager/aggregator/"):
    """(status, payload) of one project's messages under `prefix`, in arrival order."""
    return [
        (topic[len(prefix):], payload)
        for topic, payload in list(got)
        if topic.startswith(prefix) and payload.get("flops_project_id") == project_id
    ]


def outcome(got, project_id, timeout):
    """Waits for the project's `success` or `failed`: (statuses so far, that payload)."""
    def final():
        return [(s, p) for s, p in messages_of(got, project_id) if s in ("success", "failed")]

    assert wait_for(final, timeout), f"no success/failed in {timeout} s: {messages_of(got, project_id)}"
    status, payload = final()[0]
    return [s for s, _ in messages_of(got, project_id)], status, payload


@pytest.fixture
def observer():
    """A project observer on a free port: collects one message per connection."""
    with project_observer() as o:
        yield o


def run_name(run) -> str:
    """A run's name: the `mlflow.runName` tag (RunInfo.run_name appeared in MLflow 1.30; the
    lowest env runs 1.28)."""
    return run.data.tags["mlflow.runName"]


def logged_signature(client, run_id) -> dict:
    """The `signature` of the run's logged model's MLmodel, as written (inputs as JSON text)."""
    import yaml  # MLflow's own dependency

    path = client.download_artifacts(run_id, "logged_model_artifact/MLmodel", tempfile.mkdtemp())
    with open(path) as f:
        return yaml.safe_load(f).get("signature") or {}


def score(model, request: dict):
    """Predictions for a JSON request body, parsed as MLflow's scoring server parses it (the
    model's signature casts it): through the server's own `invocations` where it imports (its
    MLflow 2.0.1 needs flask, which mlflow-skinny lacks), else through the parsers that 2.0.1's
    server calls."""
    import numpy as np

    schema = model.metadata.get_input_schema()
    try:
        from mlflow.pyfunc import scoring_server
    except ImportError:
        from mlflow.utils.proto_json_utils import dataframe_from_parsed_json, parse_tf_serving_input

        if "dataframe_split" in request:
            data = dataframe_from_parsed_json(request["dataframe_split"], "split", schema=schema)
        else:
            data = parse_tf_serving_input(request, schema=schema)
        return np.asarray(model.predict(data)).tolist()
    response = scoring_server.invocations(json.dumps(request), "application/json", model, schema)
    assert response.status == 200, response.response
    return json.loads(response.response)["predictions"]


@pytest.fixture
def mlflow_client():
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(MLFLOW)
    return MlflowClient(MLFLOW)
