"""The logged model's signature, from the input schema the learners describe (never their data).

Each learner sends with its training result the metric `flops_input_schema`: MLflow's Schema JSON
of its model's input as the repo's code feeds it (tensor dtypes and shapes with a free batch
dimension, or DataFrame column names and types; the learner runtime's flops_input_schema.py).
FedAvg's fit_metrics_aggregation_fn keeps the most common one of a round (a cluster aggregator
forwards its cycle's in its own fit metrics to the root), and the best model is saved with
`signature=ModelSignature(inputs=Schema.from_json(schema))`: MLflow's scoring server then casts
`inputs`/`instances` JSON and `dataframe_split` to the signature's dtypes (a float32 network
gets float32, not float64). Without a schema (learners of an older runtime, a model whose input
could not be described) the model is logged without a signature, as before.
"""

import collections
import functools
import inspect
import json
import logging

METRIC = "flops_input_schema"

log = logging.getLogger("flops-aggregator")


def metrics(schema) -> dict:
    """Fit metrics that carry a schema (a cluster aggregator's to the root)."""
    return {METRIC: schema} if schema else {}


def difference(kept: str, other: str) -> str:
    """What sets another schema apart from the one kept, entry by entry."""
    try:
        a, b = json.loads(kept), json.loads(other)
    except ValueError:
        return f"{other!r} is not JSON"
    if not (isinstance(a, list) and isinstance(b, list)):
        return f"{other} vs {kept}"
    if len(a) != len(b):
        return f"{len(b)} input(s) instead of {len(a)}: {other}"
    parts = [f"input {i}: {json.dumps(y)} instead of {json.dumps(x)}" for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return "; ".join(parts)


def fit_metrics_aggregation(peers: str):
    """Flower's fit_metrics_aggregation_fn: the round's most common schema (the first on a tie),
    with a warning naming how the others differ (once per set of schemas)."""
    warned = set()

    def aggregate(fit_metrics) -> dict:
        schemas = [m.get(METRIC) for _, m in fit_metrics if isinstance((m or {}).get(METRIC), str)]
        if not schemas:
            return {}
        counts = collections.Counter(schemas)
        kept, n = counts.most_common(1)[0]
        if len(counts) > 1 and frozenset(counts) not in warned:
            warned.add(frozenset(counts))
            others = "; ".join(
                f"{c} sent {difference(kept, s)}" for s, c in counts.items() if s != kept
            )
            log.warning("%s sent different input schemas: keeping the most common (%d of %d), %s; %s",
                        peers, n, len(schemas), kept, others)
        return {METRIC: kept}

    return aggregate


def parse_schema(text: str):
    """mlflow.types.Schema from the learners' JSON (what the newest MLflow 2 writes)."""
    from mlflow.types import ColSpec, Schema

    entries = json.loads(text)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError("not a list of input specs")
    if "required" not in inspect.signature(ColSpec.__init__).parameters:
        # MLflow before optional columns (2.0.1 among them): every column is required and its
        # Schema.from_json passes each entry to ColSpec(**entry), which takes no `required`.
        entries = [{k: v for k, v in e.items() if k != "required"} for e in entries]
    return Schema.from_json(json.dumps(entries))


@functools.lru_cache(maxsize=8)
def signature(schema):
    """ModelSignature of the learners' schema JSON, or None (no schema, or one MLflow refuses:
    a warning, once per schema). No output schema: the learners do not describe outputs."""
    if not schema:
        return None
    from mlflow.models import ModelSignature

    try:
        return ModelSignature(inputs=parse_schema(schema))
    except Exception as e:  # noqa: BLE001 - a signature is a bonus, never a reason to fail
        log.warning("the learners' input schema %s is not usable by MLflow (%s: %s)", schema, type(e).__name__, e)
        return None


def describe(model_signature, schema) -> str:
    """The log line on the logged model's signature."""
    if model_signature is None and schema:
        return "the learners' input schema is not usable by MLflow: the model is logged without a signature"
    if model_signature is None:
        return "learners sent no input schema: the model is logged without a signature"
    return f"model logged with the learners' input signature: {model_signature.inputs.to_json()}"
