"""Real peers for the runtime's tests: an Arrow Flight data server, a Flower server and the
rig's mosquitto (scripts/rig.sh services), all on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
RUNTIME = HERE.parent
sys.path.insert(0, str(RUNTIME))
sys.path.insert(0, str(HERE))

import flight_server  # noqa: E402
from peers import free_port, project_observer, wait_for  # noqa: E402,F401

MQTT = ("127.0.0.1", 9027)


@pytest.fixture
def data_server(monkeypatch):
    port = free_port()
    # Listening from construction on. Not serve() in a thread: when shut down, pyarrow's serve()
    # turns the cancellation into a simulated SIGINT (KeyboardInterrupt) in the main thread.
    server = flight_server.DataServer(f"grpc+tcp://127.0.0.1:{port}", flight_server.default_tables())
    monkeypatch.setenv("ML_DATA_SERVER_HOST", "127.0.0.1")
    monkeypatch.setenv("ML_DATA_SERVER_PORT", str(port))
    yield server
    server.shutdown()


# A small ML repo as FLOps users write them: softmax regression on the flattened pixels of the
# image partitions (flight_server.py: 12x12 grayscale, 3 classes), in numpy. It prints when it
# is built and when it loads data, so tests can tell that sessions reuse both;
# TEST_MODEL_FAIL=fit makes fit_model raise.
MODEL_MANAGER = textwrap.dedent(
    '''
    import os

    import numpy as np
    from flops_utils.ml_repo_building_blocks import load_dataset
    from flops_utils.ml_repo_templates import ModelManagerTemplate

    PIXELS, CLASSES = 12 * 12, 3


    class ModelManager(ModelManagerTemplate):
        def __init__(self):
            print("MODEL_MANAGER built", flush=True)
            self.w, self.b = np.zeros((PIXELS, CLASSES)), np.zeros(CLASSES)

        def set_model_data(self):
            print("MODEL_MANAGER data loaded", flush=True)
            d = load_dataset().with_format("numpy")
            x = d["image"].reshape(len(d), -1) / 255.0
            y = d["label"].astype(int)
            cut = int(len(x) * 0.8)
            self.train, self.test = (x[:cut], y[:cut]), (x[cut:], y[cut:])

        def get_model(self):
            return self

        def get_model_parameters(self):
            return [self.w, self.b]

        def set_model_parameters(self, parameters):
            self.w, self.b = np.asarray(parameters[0]), np.asarray(parameters[1])

        def _p(self, x):
            z = x @ self.w + self.b
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)

        def fit_model(self):
            if os.environ.get("TEST_MODEL_FAIL") == "fit":
                raise RuntimeError("training diverged")
            x, y = self.train
            target = np.eye(CLASSES)[y]
            for _ in range(100):
                g = self._p(x) - target
                self.w = self.w - 0.5 * x.T @ g / len(x)
                self.b = self.b - 0.5 * g.mean(axis=0)
            return len(x)

        def evaluate_model(self):
            x, y = self.test
            p = np.clip(self._p(x), 1e-9, 1.0)
            loss = float(-np.log(p[np.arange(len(y)), y]).mean())
            return loss, float((p.argmax(axis=1) == y).mean()), len(x)
    '''
)
IMAGE_TAGS = "images-a,images-b"


@pytest.fixture
def ml_repo(tmp_path):
    (tmp_path / "model_manager.py").write_text(MODEL_MANAGER)
    return tmp_path


def learner_env(**extra) -> dict:
    """As in the image (no telemetry), retrying fast; one session unless a test says otherwise."""
    env = dict(os.environ)
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLOPS_LEARNER_RETRY_DELAY": "0.5",
            "FLOPS_LEARNER_MAX_SESSIONS": "1",
        }
    )
    env.update(extra)
    return env


def start_learner(repo: Path, args, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(RUNTIME / "main.py"), *args],
        cwd=repo,
        env=learner_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def start_flower(port: int, rounds: int = 1, min_clients: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(HERE / "flower_server.py"), f"127.0.0.1:{port}", str(rounds), str(min_clients)],
        env=learner_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


class Output:
    """A process's output lines, read by a thread as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.lines = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self.thread.start()

    def __str__(self):
        return "".join(self.lines)

    def has(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def finish(self):
        self.thread.join(timeout=10)
        return str(self)


def flower_result(output: str) -> dict:
    for line in output.splitlines():
        if line.startswith("FLOWER_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    raise AssertionError("the Flower server printed no result:\n" + output)


@pytest.fixture
def mqtt_messages():
    """Subscribes to the learner's failed topic on the rig's mosquitto; yields the list."""
    import paho.mqtt.client as mqtt

    try:
        socket.create_connection(MQTT, timeout=2).close()
    except OSError:
        pytest.fail(f"no MQTT broker on {MQTT[0]}:{MQTT[1]}; start it with `scripts/rig.sh services`")
    got, ready = [], threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = lambda c, *a: c.subscribe("flops_manager/learner/failed", qos=1)
    client.on_subscribe = lambda *a: ready.set()
    client.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    client.connect(*MQTT)
    client.loop_start()
    assert ready.wait(5), "MQTT subscription was not acknowledged"
    yield got
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def observer():
    """A project observer on a free port: collects one message per connection."""
    with project_observer() as o:
        yield o
