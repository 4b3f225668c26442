"""The input schema a learner sends with its training results (flops_input_schema.py): only
dtypes, shapes and names, never a data value; captured from what the repo's code feeds its model.

torch and TensorFlow are not in the test envs: their paths are checked here against small
stand-ins with the same hook and attribute API (documented behaviour only), and end to end with
the real libraries by scripts/flops-e2e.sh."""

import json
import logging
import sys
import textwrap
import types

import numpy as np
import pyarrow
import pytest

import flops_input_schema as fis
import flight_server
from conftest import flower_result, free_port, start_flower, start_learner, wait_for

ALLOWED_KEYS = {"type", "tensor-spec", "dtype", "shape", "name", "required"}


class Manager:
    """The part of a ModelManager the capture uses."""

    def __init__(self, model):
        self.model = model

    def get_model(self):
        return self.model


def captured(model, *calls):
    """The schema (parsed) after running `calls` (functions of the model) through the capture."""
    schema = fis.InputSchema(Manager(model))
    for call in calls:
        schema.during(lambda: call(model))
    metrics = schema.metrics()
    return json.loads(metrics[fis.METRIC]) if metrics else None


def tensor(dtype, shape):
    return [{"type": "tensor", "tensor-spec": {"dtype": dtype, "shape": shape}}]


# ---------------------------------------------------------------------------------------------
# Arrays, DataFrames, estimators


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.zeros((5, 3, 32, 32), np.float32), tensor("float32", [-1, 3, 32, 32])),
        (np.zeros((7, 28, 28), np.uint8), tensor("uint8", [-1, 28, 28])),
        (np.zeros(4, np.int64), tensor("int64", [-1])),
        (np.zeros((2, 2), ">f8"), tensor("float64", [-1, 2])),  # byte order is not a type
        (np.array([["a", "bcd"]]), tensor("str", [-1, 2])),  # MLflow takes no <U3
        (np.array([b"x"]), tensor("bytes", [-1])),
        (np.array([{"k": 1}], dtype=object), tensor("object", [-1])),
    ],
)
def test_an_array_is_a_tensor_with_a_free_batch_dimension(array, expected):
    assert fis.describe(array) == expected


@pytest.mark.parametrize("value", [np.float64(3.5), np.zeros((2, 2), "V8"), [[1.0, 2.0]], "text", None])
def test_what_cannot_be_described_is_unsupported(value):
    with pytest.raises(fis.Unsupported):
        fis.describe(value)


def test_a_dataframe_gives_its_column_names_and_mlflow_types():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {
            "f64": [1.5],
            "f32": np.array([1.5], np.float32),
            "i64": np.array([1], np.int64),
            "i32": np.array([1], np.int32),
            "u8": np.array([1], np.uint8),
            "u32": np.array([1], np.uint32),
            "flag": [True],
            "text": ["a"],
            "blob": [b"x"],
            "when": pd.to_datetime(["2024-01-01"]),
            "nullable": pd.array([1], dtype="Int64"),
        }
    )
    types_ = ["double", "float", "long", "integer", "integer", "long", "boolean", "string", "binary",
              "datetime", "long"]
    assert fis.describe(frame) == [
        {"type": t, "name": c, "required": True} for c, t in zip(frame.columns, types_)
    ]
    for bad in (pd.DataFrame({"c": pd.Categorical(["a"])}), pd.DataFrame({"mixed": [1, "a"]}),
                pd.DataFrame({0: [1.0]}), pd.DataFrame({"u64": np.array([1], np.uint64)})):
        with pytest.raises(fis.Unsupported):
            fis.describe(bad)


def test_an_sklearn_estimator_gives_the_x_of_its_fit_and_is_left_as_it_was():
    from sklearn.linear_model import LogisticRegression

    x, y = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32), np.arange(20) % 2
    model, methods = LogisticRegression(), dict(vars(LogisticRegression))
    assert captured(model, lambda m: m.fit(x, y)) == tensor("float32", [-1, 3])
    # Shadowed on the instance only, during the call only.
    assert not {"fit", "predict", "score"} & set(vars(model))
    assert dict(vars(LogisticRegression)) == methods
    assert list(model.predict(x[:2])) == list(LogisticRegression().fit(x, y).predict(x[:2]))


def test_a_model_saved_while_it_trains_is_saved_without_the_capture():
    import copy
    import pickle

    from sklearn.linear_model import LogisticRegression

    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    saved = []

    def train(m):
        saved.extend([pickle.loads(pickle.dumps(m)), copy.deepcopy(m)])  # a repo's checkpoint
        m.fit(x, y)

    assert captured(LogisticRegression(), train) == tensor("float64", [-1, 2])
    for model in saved:
        assert not any(isinstance(v, fis.Shadow) for v in vars(model).values()), vars(model)
        assert list(model.fit(x, y).predict(x)) == list(LogisticRegression().fit(x, y).predict(x))


def test_an_estimator_fed_a_dataframe_gives_columns():
    pd = pytest.importorskip("pandas")
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"x1": np.linspace(-1, 1, 10), "x2": np.arange(10)})
    assert captured(LogisticRegression(), lambda m: m.fit(frame, np.arange(10) % 2)) == [
        {"type": "double", "name": "x1", "required": True},
        {"type": "long", "name": "x2", "required": True},
    ]


def test_evaluation_captures_what_training_did_not():
    class Estimator:
        """Anything with a fit method: trained without calling it (say, from saved weights)."""

        def fit(self, X, y=None):  # noqa: N803 - scikit-learn's names
            return self

        def predict_proba(self, X):  # noqa: N803
            return np.full((len(X), 2), 0.5)

    model = Estimator()
    schema = fis.InputSchema(Manager(model))
    schema.during(lambda: None)  # fit_model that never calls fit
    assert schema.metrics() == {}
    schema.during(lambda: model.predict_proba(X=np.zeros((3, 4), np.float64)))
    assert json.loads(schema.metrics()[fis.METRIC]) == tensor("float64", [-1, 4])
    assert vars(model) == {}


def test_a_failing_fit_is_left_unchanged_and_undone(caplog):
    class Estimator:
        def fit(self, x, y=None):
            raise RuntimeError("training diverged")

    model = Estimator()
    schema = fis.InputSchema(Manager(model))
    with caplog.at_level(logging.INFO, "flops-learner"), pytest.raises(RuntimeError, match="diverged"):
        schema.during(lambda: model.fit(np.zeros((2, 2))))
    assert vars(model) == {} and schema.metrics() == {}
    assert not caplog.records  # the learner fails for its own reason, not ours


def test_a_model_that_cannot_be_described_sends_nothing_and_says_so_once(caplog):
    class Handmade:
        """A ModelManager whose model is itself: no fit method (the learner suite's repo)."""

    schema = fis.InputSchema(Manager(Handmade()))
    with caplog.at_level(logging.INFO, "flops-learner"):
        for _ in range(3):
            assert schema.during(lambda: 42) == 42
    assert schema.metrics() == {}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("no input schema captured (ModelManager.get_model() "
                                                   "returned a Handmade"), lines


@pytest.mark.parametrize(
    "specs",
    [
        [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 2]}, "example": [[0.5]]}],
        [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 0.5]}}],
        [{"type": "tensor", "tensor-spec": {"dtype": "0.5", "shape": [-1]}}],
        [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1], "values": [1]}}],
        [{"type": "3.25", "name": "x"}],
        [{"type": "double", "name": 3.25}],
        [{"type": "double", "name": "x", "required": 3.25}],
        [],
    ],
)
def test_the_last_check_lets_no_value_through(specs):
    with pytest.raises(fis.Unsupported, match="internal"):
        fis.only_names_and_types(specs)


# ---------------------------------------------------------------------------------------------
# torch and Keras, through stand-ins of their documented API


class TorchDtype:
    """As torch.float32 shows itself: `str()` is "torch.float32", its type is torch's."""

    __module__ = "torch"

    def __init__(self, name):
        self.name = name

    def __str__(self):
        return f"torch.{self.name}"


class TorchTensor:
    def __init__(self, shape, dtype="float32"):
        self.shape, self.dtype = tuple(shape), TorchDtype(dtype)


def fake_torch(with_kwargs: bool):
    """A `torch` module whose nn.Module runs forward pre-hooks as torch does (torch >= 2.0 passes
    keyword arguments to hooks registered with_kwargs=True; older torch has no such option)."""

    class Handle:
        def __init__(self, hooks, key):
            self.hooks, self.key = hooks, key

        def remove(self):
            self.hooks.pop(self.key, None)

    class Module:
        def __init__(self):
            self.hooks = {}

        def _register(self, hook, kw):
            key = object()
            self.hooks[key] = (hook, kw)
            return Handle(self.hooks, key)

        if with_kwargs:
            def register_forward_pre_hook(self, hook, *, prepend=False, with_kwargs=False):
                return self._register(hook, with_kwargs)
        else:
            def register_forward_pre_hook(self, hook):
                return self._register(hook, False)

        def __call__(self, *args, **kwargs):
            for hook, kw in list(self.hooks.values()):
                hook(self, args, kwargs) if kw else hook(self, args)
            return self.forward(*args, **kwargs)

        def forward(self, *args, **kwargs):
            return None

    torch = types.ModuleType("torch")
    torch.nn = types.SimpleNamespace(Module=Module)
    return torch


@pytest.mark.parametrize("with_kwargs", [True, False], ids=["torch2", "torch1"])
def test_a_torch_module_gives_its_first_input_through_a_forward_pre_hook(monkeypatch, with_kwargs):
    torch = fake_torch(with_kwargs)
    monkeypatch.setitem(sys.modules, "torch", torch)
    net = torch.nn.Module()

    def train(m):
        m(TorchTensor((32, 3, 32, 32)))
        m(TorchTensor((7, 3, 32, 32)))  # the last, smaller batch

    assert captured(net, train) == tensor("float32", [-1, 3, 32, 32])
    assert net.hooks == {}  # removed after the call
    assert captured(torch.nn.Module(), lambda m: m({"image": TorchTensor((4, 1, 8, 8)),
                                                    "mask": TorchTensor((4, 8), "bool")})) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1, 8, 8]}, "name": "image"},
        {"type": "tensor", "tensor-spec": {"dtype": "bool", "shape": [-1, 8]}, "name": "mask"},
    ]
    # Not what pyfunc serving can give (two positional inputs), no NumPy dtype: no schema.
    assert captured(torch.nn.Module(), lambda m: m(TorchTensor((4, 2)), TorchTensor((4, 2)))) is None
    assert captured(torch.nn.Module(), lambda m: m(TorchTensor((4, 2), "bfloat16"))) is None


def test_without_torch_imported_a_module_is_not_taken_for_one(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert not fis.is_torch_module(object())


class KerasTensor:
    def __init__(self, shape, dtype, name="keras_tensor"):
        self.shape, self.dtype, self.name = shape, dtype, name


class TfDtype:
    """tf.float32 as tf.keras 2 gives it: `as_numpy_dtype`."""

    as_numpy_dtype = np.float32


def keras_model(inputs, module="keras.src.models.sequential", **attrs):
    def get_inputs(self):
        if isinstance(inputs, Exception):
            raise inputs
        return inputs

    cls = type("Sequential", (), {"__module__": module, "inputs": property(get_inputs),
                                  "fit": lambda self, *a, **k: None, **attrs})
    return cls()


def test_a_keras_model_gives_its_inputs():
    fit = lambda m: m.fit(np.zeros((4, 32, 32, 3)))  # noqa: E731 - Keras's own inputs count, not x
    assert captured(keras_model([KerasTensor((None, 32, 32, 3), "float32")]), fit) == tensor(
        "float32", [-1, 32, 32, 3])
    # tf.keras 2: a TensorShape (iterates as ints and None) and a tf.DType.
    assert captured(keras_model([KerasTensor([None, 10], TfDtype())], "tf_keras.src.engine.sequential"),
                    fit) == tensor("float32", [-1, 10])
    two = [KerasTensor((None, 4), "float32", "a"), KerasTensor((None, None), "int32", "b")]
    assert captured(keras_model(two, "keras.src.models.functional"), fit) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 4]}, "name": "a"},
        {"type": "tensor", "tensor-spec": {"dtype": "int32", "shape": [-1, -1]}, "name": "b"},
    ]
    # A Sequential never built with an Input: Keras has no inputs to give.
    assert captured(keras_model(AttributeError("The layer has never been called")), fit) is None
    assert captured(keras_model([]), fit) is None


# ---------------------------------------------------------------------------------------------
# End to end: what a learner sends to a real Flower server

# A repo that trains scikit-learn on a DataFrame, or on a float32 array (TEST_INPUT=array).
LEAK_REPO = textwrap.dedent(
    '''
    import os
    import warnings

    import numpy as np
    from flops_utils.ml_repo_building_blocks import load_dataset
    from flops_utils.ml_repo_templates import ModelManagerTemplate
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss


    class ModelManager(ModelManagerTemplate):
        def __init__(self):
            self.model = LogisticRegression(max_iter=5)
            self.model.classes_ = np.array([0, 1])
            self.model.coef_, self.model.intercept_ = np.zeros((1, 2)), np.zeros(1)

        def set_model_data(self):
            frame = load_dataset().to_pandas()
            x = frame[["x1", "x2"]]
            if os.environ["TEST_INPUT"] == "array":
                x = x.to_numpy(dtype=np.float32)
            y = frame["label"].to_numpy()
            self.train, self.test = (x[:80], y[:80]), (x[80:], y[80:])

        def get_model(self):
            return self.model

        def get_model_parameters(self):
            return [self.model.coef_, self.model.intercept_]

        def set_model_parameters(self, parameters):
            self.model.coef_, self.model.intercept_ = parameters[0], parameters[1]

        def fit_model(self):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.model.fit(*self.train)
            return len(self.train[1])

        def evaluate_model(self):
            x, y = self.test
            loss = log_loss(y, self.model.predict_proba(x), labels=[0, 1])
            return float(loss), float(self.model.score(x, y)), len(y)
    '''
)

# Data values no schema could contain by chance: any of these digits in what a learner sends
# would be a leak (float64, float32 and integer renderings alike).
MARKERS = ("98765", "9.8765", "424242", "4.24242", "4242")


def leak_table(n=100) -> pyarrow.Table:
    sign = np.where(np.random.default_rng(5).random(n) < 0.5, -1.0, 1.0)
    x1 = sign * (987654.321 + np.arange(n) * 1.0001)
    x2 = 4242420000 + np.arange(n, dtype=np.int64)
    return pyarrow.table({"x1": x1, "x2": x2, "label": (sign > 0).astype(np.int64)})


@pytest.fixture
def leak_data(monkeypatch):
    port = free_port()
    server = flight_server.DataServer(f"grpc+tcp://127.0.0.1:{port}", {"leak": leak_table()})
    monkeypatch.setenv("ML_DATA_SERVER_HOST", "127.0.0.1")
    monkeypatch.setenv("ML_DATA_SERVER_PORT", str(port))
    yield server
    server.shutdown()


def leaves(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(k)
            yield from leaves(v)
    elif isinstance(value, list):
        for v in value:
            yield from leaves(v)
    else:
        yield value


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("dataframe", [{"type": "double", "name": "x1", "required": True},
                       {"type": "long", "name": "x2", "required": True}]),
        ("array", tensor("float32", [-1, 2])),
    ],
)
def test_no_learner_sends_a_data_value_to_the_aggregator(leak_data, tmp_path, observer, kind, expected):
    (tmp_path / "model_manager.py").write_text(LEAK_REPO)
    port = free_port()
    # Two rounds: the schema is sent with every training result, evaluation sends accuracy.
    flower = start_flower(port, rounds=2)
    try:
        assert wait_for(lambda: _listening(port), 60), "the Flower server did not start"
        learner = start_learner(tmp_path, ["p-leak", "127.0.0.1", observer[0], f"127.0.0.1:{port}", "leak"],
                                TEST_INPUT=kind)
        learner_out, _ = learner.communicate(timeout=180)
        server_out, _ = flower.communicate(timeout=60)
    finally:
        flower.kill()
        flower.wait(timeout=10)
    assert learner.returncode == 0 and flower.returncode == 0, learner_out + "\n--- server:\n" + server_out
    result = flower_result(server_out)
    assert len(result["fit_metrics"]) == 2 and len(result["evaluate_metrics"]) == 2, result
    assert all(set(m) == {"accuracy"} for m in result["evaluate_metrics"]), result
    for metrics in result["fit_metrics"]:
        assert set(metrics) == {fis.METRIC}, metrics
        schema = json.loads(metrics[fis.METRIC])
        assert schema == expected
        # MLflow's Schema JSON and nothing else: known keys; numbers only in shapes; strings
        # only types, dtypes and the column names.
        for spec in schema:
            assert set(spec) | set(spec.get("tensor-spec", {})) <= ALLOWED_KEYS, spec
        numbers = [v for v in leaves(schema) if isinstance(v, (int, float)) and not isinstance(v, bool)]
        shapes = [d for spec in schema for d in spec.get("tensor-spec", {}).get("shape", [])]
        assert sorted(numbers) == sorted(shapes), schema
        strings = {v for v in leaves(schema) if isinstance(v, str)}
        assert strings <= ALLOWED_KEYS | set(fis.COLUMN_TYPES) | set(fis.TENSOR_DTYPES) | {"tensor", "x1", "x2"}
    sent = json.dumps(result["fit_metrics"] + result["evaluate_metrics"])
    assert not [m for m in MARKERS if m in sent], sent
    assert "model input schema (sent to the aggregator, no data)" in learner_out, learner_out


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
