"""The input schema of the ML repo's model, as the repo's own code feeds it: for the signature
of the model the aggregator logs, without the data.

MLflow's scoring server casts a request's JSON (`inputs`, `instances`, `dataframe_split`) to the
dtypes of the model's signature; without one a PyTorch network gets float64 and fails. The
aggregator has no data, so each learner describes its model's input (tensor shapes with a free
batch dimension, -1, and dtypes; or a DataFrame's column names and types) and sends that with its
fit result as the metric `flops_input_schema`: MLflow's own Schema JSON (what
`mlflow.types.Schema.to_json()` writes; the learner image has no MLflow), e.g.

    [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3, 32, 32]}}]
    [{"type": "double", "name": "x1", "required": true}, {"type": "long", "name": "x2", ...}]

Never a data value: the JSON is built from dtype names, shapes and names only, and checked to
hold nothing else before it is sent (only_names_and_types).

Captured while `ModelManager.fit_model()` and `evaluate_model()` run, by the type of
`ModelManager.get_model()` (ML_MODEL_FLAVOR is not set in every learner image):
- a torch.nn.Module: a forward pre-hook on it; the first call's tensor (a dict of tensors gives
  named tensors);
- a Keras / tf.keras model: `model.inputs` after the call (Sequential with an Input layer,
  functional models, models built on their first call where Keras then exposes inputs);
- anything else with a `fit` method (scikit-learn): the X given to the instance's fit,
  partial_fit, predict, predict_proba or score, shadowed on the instance during the call only:
  an array (anything with shape and dtype) is a tensor, a pandas DataFrame columns.
Anything else (several positional inputs, an unsupported dtype, a model of no such kind) gives
no schema: said once in the log, and the learner sends no metric, as before; the aggregator then
logs the model without a signature.
"""

import functools
import json
import logging
import sys

METRIC = "flops_input_schema"

log = logging.getLogger("flops-learner")

# MLflow's column types (mlflow.types.DataType) that a DataFrame column can map to.
COLUMN_TYPES = ("boolean", "integer", "long", "float", "double", "string", "binary", "datetime")
# NumPy dtype names MLflow's TensorSpec takes (flexible types without their size).
TENSOR_DTYPES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128", "str", "bytes", "object",
)
# The only keys of MLflow's Schema JSON written here.
SPEC_KEYS = {"type", "tensor-spec", "name", "required"}
# The methods of an estimator whose X is the model's input.
ESTIMATOR_METHODS = ("fit", "partial_fit", "predict", "predict_proba", "score")


class Unsupported(Exception):
    """The input cannot be described: no schema."""


def dtype_name(dtype) -> str:
    """A NumPy dtype name from a NumPy, pandas, torch, TensorFlow or Keras 3 (str) dtype."""
    import numpy as np

    if isinstance(dtype, str) or type(dtype).__module__.split(".")[0] == "torch":
        candidate = str(dtype).replace("torch.", "", 1)  # torch.float32 -> float32, no torch import
    else:
        candidate = getattr(dtype, "as_numpy_dtype", dtype)  # tf.DType
    try:
        np_dtype = np.dtype(candidate)
    except TypeError:
        raise Unsupported(f"dtype {dtype} has no NumPy equivalent") from None
    # MLflow refuses flexible types with a size (<U12): any length is the model's input.
    name = {"U": "str", "S": "bytes", "O": "object"}.get(np_dtype.kind, np_dtype.name)
    if name not in TENSOR_DTYPES:
        raise Unsupported(f"dtype {np_dtype.name}")
    return name


def tensor_spec(dtype, shape, name=None) -> dict:
    """A TensorSpec's JSON; the first dimension (the batch) is free (-1), as are unknown ones."""
    try:
        dims = [-1 if d is None else int(d) for d in shape]
    except (TypeError, ValueError):
        raise Unsupported(f"shape {shape}") from None
    if not dims:
        raise Unsupported("a scalar input (no batch dimension)")
    dims[0] = -1
    spec = {"type": "tensor", "tensor-spec": {"dtype": dtype_name(dtype), "shape": dims}}
    if name is not None:
        spec["name"] = str(name)
    return spec


def column_type(column) -> str:
    """MLflow's type of a pandas column (as mlflow.types.utils infers it)."""
    import pandas as pd

    dtype = column.dtype
    kind = getattr(dtype, "kind", "O")
    if isinstance(dtype, pd.StringDtype):
        return "string"
    if kind == "b":
        return "boolean"
    if kind in ("i", "u"):
        size = dtype.itemsize
        if size < 4 or (kind == "i" and size == 4):
            return "integer"
        if size < 8 or (kind == "i" and size == 8):
            return "long"
    if kind == "f" and dtype.itemsize in (2, 4, 8):
        return "float" if dtype.itemsize <= 4 else "double"
    if kind in ("U", "S", "M"):
        return {"U": "string", "S": "binary", "M": "datetime"}[kind]
    if kind == "O" and not isinstance(dtype, pd.CategoricalDtype):
        # Object columns: the type of their values (read here, only the type name is kept).
        inferred = pd.api.types.infer_dtype(column, skipna=True)
        if inferred in ("string", "bytes"):
            return "string" if inferred == "string" else "binary"
    raise Unsupported(f"column {column.name!r} of dtype {dtype}")


def describe(x) -> list:
    """The schema entries of one model input: a DataFrame, a dict of tensors or an array."""
    pd = sys.modules.get("pandas")  # a DataFrame implies pandas was imported
    if pd is not None and isinstance(x, pd.DataFrame):
        if not all(isinstance(c, str) for c in x.columns):
            raise Unsupported("a DataFrame with column names that are not strings")
        if x.columns.empty:
            raise Unsupported("a DataFrame without columns")
        return [{"type": column_type(x[c]), "name": c, "required": True} for c in x.columns]
    if isinstance(x, dict) and x and all(hasattr(v, "shape") and hasattr(v, "dtype") for v in x.values()):
        if not all(isinstance(k, str) for k in x):
            raise Unsupported("a dict of tensors with keys that are not strings")
        return [tensor_spec(v.dtype, v.shape, k) for k, v in x.items()]
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return [tensor_spec(x.dtype, x.shape)]
    raise Unsupported(f"an input of type {type(x).__name__}")


def only_names_and_types(specs: list) -> str:
    """The schema's JSON, once checked to hold only types, shapes, names and `required`: whatever
    went wrong above, no data value can leave the learner this way."""
    def bad(what):
        raise Unsupported(f"internal: {what} in the schema")

    if not isinstance(specs, list) or not specs:
        bad("no entry")
    for spec in specs:
        if not isinstance(spec, dict) or not set(spec) <= SPEC_KEYS:
            bad("an unexpected key")
        if "name" in spec and not isinstance(spec["name"], str):
            bad("a name that is not a string")
        if spec.get("required", True) is not True:
            bad("a required flag that is not true")
        if spec.get("type") == "tensor":
            tensor = spec["tensor-spec"]
            if set(tensor) != {"dtype", "shape"} or tensor["dtype"] not in TENSOR_DTYPES:
                bad("an unexpected tensor spec")
            if not all(type(d) is int for d in tensor["shape"]):
                bad("a dimension that is not an integer")
        elif spec.get("type") not in COLUMN_TYPES or "tensor-spec" in spec:
            bad("an unexpected type")
    return json.dumps(specs)


def is_torch_module(model) -> bool:
    torch = sys.modules.get("torch")  # a torch model implies torch was imported
    return torch is not None and isinstance(model, torch.nn.Module)


def is_keras_model(model) -> bool:
    roots = {c.__module__.split(".")[0] for c in type(model).__mro__}
    return bool(roots & {"keras", "tf_keras", "tensorflow"})


class Probe:
    """Records the first describable input; `finish()` undoes what was installed."""

    def __init__(self):
        self.found, self.problem = None, None

    def record(self, args, kwargs) -> None:
        if self.found is not None:
            return
        try:
            if len(args) == 1:
                self.found = describe(args[0])
            elif not args and len(kwargs) == 1:  # fit(X=...), a model called by keyword
                self.found = describe(next(iter(kwargs.values())))
            else:
                raise Unsupported(f"{len(args)} positional and {len(kwargs)} keyword inputs")
        except Unsupported as e:
            self.problem = str(e)
        except Exception as e:  # noqa: BLE001 - describing must never disturb training
            self.problem = f"{type(e).__name__}: {e}"

    def finish(self):
        if self.found is None:
            raise Unsupported(self.problem or "the model was never called")
        return self.found


class TorchProbe(Probe):
    def __init__(self, module):
        super().__init__()

        def hook(_module, args, kwargs=None):
            # Tensors passed by keyword (with_kwargs) are not the input pyfunc serving gives.
            self.record(args, {k: v for k, v in (kwargs or {}).items() if hasattr(v, "shape")})

        try:
            self.handle = module.register_forward_pre_hook(hook, with_kwargs=True)
        except TypeError:  # torch < 2.0: positional arguments only
            self.handle = module.register_forward_pre_hook(hook)

    def finish(self):
        self.handle.remove()
        return super().finish()


class KerasProbe(Probe):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def finish(self):
        try:
            inputs = list(self.model.inputs or [])
        except Exception as e:  # noqa: BLE001 - Keras raises on models it has not built
            raise Unsupported(f"Keras has no inputs for this model ({type(e).__name__}: {e})") from None
        if not inputs:
            raise Unsupported("Keras has no inputs for this model (a Sequential without an Input layer?)")
        if len(inputs) == 1:
            return [tensor_spec(inputs[0].dtype, inputs[0].shape)]
        try:
            names = list(getattr(self.model, "input_names", None) or [t.name for t in inputs])
        except Exception:  # noqa: BLE001
            names = [t.name for t in inputs]
        return [tensor_spec(t.dtype, t.shape, n) for t, n in zip(inputs, names)]


class EstimatorProbe(Probe):
    """The estimator's methods shadowed on the instance (never its class), restored by finish()."""

    def __init__(self, model):
        super().__init__()
        self.model, self.saved = model, []
        own = vars(model)  # TypeError without a __dict__ (slots): nothing to shadow
        try:
            for name in ESTIMATOR_METHODS:
                original = getattr(model, name, None)
                if callable(original):
                    saved = (name, name in own, own.get(name))
                    setattr(model, name, self.shadow(original))
                    self.saved.append(saved)
        except BaseException:
            self.restore()
            raise

    def shadow(self, original):
        return Shadow(self, original)

    def restore(self) -> None:
        while self.saved:
            name, had, value = self.saved.pop()
            if had:
                setattr(self.model, name, value)
            else:
                delattr(self.model, name)

    def finish(self):
        self.restore()
        return super().finish()


class Shadow:
    """An estimator's method that shows its X to the probe first. Pickled (or deep-copied) as
    the method itself: a repo that saves its model while training saves no probe."""

    def __init__(self, probe, original):
        self.probe, self.original = probe, original
        functools.update_wrapper(self, original)

    def __call__(self, *args, **kwargs):
        x = {k: v for k, v in kwargs.items() if k in ("X", "x")}
        self.probe.record(args[:1], {} if args else x)
        return self.original(*args, **kwargs)

    def __reduce__(self):
        return self.original.__reduce__()


def probe_for(model) -> Probe:
    if is_torch_module(model):
        return TorchProbe(model)
    if is_keras_model(model):
        return KerasProbe(model)
    if callable(getattr(model, "fit", None)):
        return EstimatorProbe(model)
    raise Unsupported(f"ModelManager.get_model() returned a {type(model).__name__}, neither a torch "
                      "module, a Keras model nor an estimator with a fit method")


class InputSchema:
    """Captures the schema during the repo's fit_model/evaluate_model until it is known."""

    def __init__(self, model_manager):
        self.model_manager = model_manager
        self.json = None
        self.told = False  # a failure is logged once

    def metrics(self) -> dict:
        """The fit result's metrics: the schema when known, else none."""
        return {METRIC: self.json} if self.json else {}

    def during(self, call):
        """call() (the ModelManager's fit_model or evaluate_model) with the capture in place."""
        if self.json is not None:
            return call()
        probe, problem = None, None
        try:
            probe = probe_for(self.model_manager.get_model())
        except Exception as e:  # noqa: BLE001 - the capture must never stop training
            problem = str(e) if isinstance(e, Unsupported) else f"{type(e).__name__}: {e}"
        try:
            result = call()
        except BaseException:
            if probe is not None:
                try:
                    probe.finish()  # undone; the call's own failure is what matters
                except Exception:  # noqa: BLE001
                    pass
            raise
        if probe is not None:
            try:
                self.json = only_names_and_types(probe.finish())
                log.info("model input schema (sent to the aggregator, no data): %s", self.json)
            except Exception as e:  # noqa: BLE001
                problem = str(e) if isinstance(e, Unsupported) else f"{type(e).__name__}: {e}"
        if self.json is None and not self.told:
            self.told = True
            log.info("no input schema captured (%s): the aggregator logs the model without a signature",
                     problem)
        return result
