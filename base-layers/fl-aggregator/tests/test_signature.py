"""The logged model's signature from the learners' input schema (flops_signature.py), in process:
a round's schemas, MLflow's parsing of them in this env's MLflow, and a model with a column
signature made from the learner runtime's own capture, served through the scoring server's
parsing. (The runs with real learners and the tracking server are in test_aggregator_*.py.)"""

import importlib.util
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import LEARNER, RUNTIME, score

sys.path.insert(0, str(RUNTIME))
import flops_signature  # noqa: E402

FLOAT32 = json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3, 32, 32]}}])
FLOAT64 = json.dumps([{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 3, 32, 32]}}])
COLUMNS = json.dumps([{"type": "double", "name": "x1", "required": True},
                      {"type": "float", "name": "x2", "required": True}])


def test_a_round_keeps_the_most_common_schema_and_says_how_others_differ(caplog):
    aggregate = flops_signature.fit_metrics_aggregation("learner(s)")
    metric = flops_signature.METRIC
    assert aggregate([(10, {}), (5, {"accuracy": 0.5})]) == {}
    assert aggregate([(10, {}), (5, {metric: FLOAT32})]) == {metric: FLOAT32}
    with caplog.at_level(logging.WARNING, "flops-aggregator"):
        got = aggregate([(1, {metric: FLOAT64}), (1, {metric: FLOAT32}), (1, {metric: FLOAT32})])
        assert got == {metric: FLOAT32}
        aggregate([(1, {metric: FLOAT64}), (1, {metric: FLOAT32}), (1, {metric: FLOAT32})])
    [warning] = [r.getMessage() for r in caplog.records]  # once per set of schemas
    assert "learner(s) sent different input schemas: keeping the most common (2 of 3)" in warning
    assert ('1 sent input 0: {"type": "tensor", "tensor-spec": {"dtype": "float64", '
            '"shape": [-1, 3, 32, 32]}} instead of') in warning, warning
    # A tie: the first result's.
    assert aggregate([(1, {metric: FLOAT64}), (1, {metric: FLOAT32})]) == {metric: FLOAT64}


@pytest.mark.parametrize("schema", [FLOAT32, COLUMNS])
def test_this_mlflow_reads_the_learners_json(schema):
    from mlflow.models import ModelSignature
    from mlflow.types import Schema

    signature = flops_signature.signature(schema)
    assert isinstance(signature, ModelSignature) and signature.outputs is None
    # What this MLflow writes in the MLmodel reads back as the same schema (2.0.1 writes
    # columns without `required`: all its columns are required).
    assert Schema.from_json(signature.inputs.to_json()) == signature.inputs
    names = [i.name for i in signature.inputs.inputs]
    assert names == ([None] if schema == FLOAT32 else ["x1", "x2"])


def test_without_a_usable_schema_there_is_no_signature(caplog):
    assert flops_signature.signature(None) is None
    with caplog.at_level(logging.WARNING, "flops-aggregator"):
        assert flops_signature.signature('[{"type": "tensor", "tensor-spec": {"dtype": "nope"}}]') is None
    assert "is not usable by MLflow" in caplog.text
    assert flops_signature.describe(None, None) == (
        "learners sent no input schema: the model is logged without a signature")


def learner_schema_module():
    spec = importlib.util.spec_from_file_location("learner_input_schema", LEARNER / "flops_input_schema.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_dataframe_model_is_served_through_its_column_signature(extra_path, tmp_path):
    import mlflow.pyfunc
    import mlflow.sklearn
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    # The learner's capture, as its runtime runs it around fit_model.
    learner = learner_schema_module()
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x1": rng.normal(size=200), "x2": rng.normal(size=200).astype(np.float32)})
    model = LogisticRegression()
    capture = learner.InputSchema(type("Manager", (), {"get_model": lambda self: model})())
    capture.during(lambda: model.fit(frame, (frame.x1 + frame.x2 > 0).astype(int)))
    schema = capture.metrics()[learner.METRIC]
    assert schema == COLUMNS

    mlflow.sklearn.save_model(model, str(tmp_path / "model"), signature=flops_signature.signature(schema))
    served = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    for request in (
        {"inputs": {"x1": [2.0, -2.0], "x2": [1.0, -1.0]}},
        {"dataframe_split": {"columns": ["x1", "x2"], "data": [[2.0, 1.0], [-2.0, -1.0]]}},
    ):
        assert score(served, request) == [1, 0], request


def test_the_runtimes_own_files_are_not_the_models_code(tmp_path):
    # In the image, main.py and flops_signature.py sit in the working directory with the repo.
    for name in ("main.py", "flops_signature.py"):
        shutil.copy(RUNTIME / name, tmp_path / name)
    (tmp_path / "model_manager.py").write_text("")
    done = subprocess.run([sys.executable, "-c", "import main; print(main.repo_code_paths())"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == repr([str(tmp_path / "model_manager.py")]), done.stdout
