"""The learner's data: Arrow Flight streams from the node's ML data server.

`flops_utils.ml_repo_building_blocks.load_dataset()` (called by the ML repo) imports
`load_data_from_ml_data_server` from this module. The server lists the flights that match
the learner's data tags (criteria: JSON `{"data_tags": [...]}`); every matching stream is
fetched and the tables are joined into one `datasets.Dataset` in arrow format.

FLOps' data provider writes each partition with `datasets.Dataset.to_parquet`, so image columns
arrive as {bytes, path} structs and the schema's `huggingface` metadata names the features; the
returned dataset keeps them, and `datasets` decodes the images (with Pillow) once the repo picks
a format such as "numpy". Partitions with different columns are an error, not a join.
Environment: FLOPS_DATA_TAGS (set by main.py), ML_DATA_SERVER_HOST (default 172.17.0.1, the
Docker bridge), ML_DATA_SERVER_PORT (default 11027).
"""

import json
import os

import datasets
import pyarrow
import pyarrow.flight as flight

HOST_ENV = "ML_DATA_SERVER_HOST"
PORT_ENV = "ML_DATA_SERVER_PORT"
TAGS_ENV = "FLOPS_DATA_TAGS"
# The Docker bridge's host address, where upstream's ML data server listens.
DEFAULT_HOST = "172.17.0.1"
DEFAULT_PORT = 11027
TIMEOUT_S = 60.0


class DataLoadingError(RuntimeError):
    pass


def data_tags_from_env():
    return [t.strip() for t in os.environ.get(TAGS_ENV, "").split(",") if t.strip()]


def server_location() -> str:
    host = os.environ.get(HOST_ENV) or DEFAULT_HOST
    port = os.environ.get(PORT_ENV) or DEFAULT_PORT
    return f"grpc+tcp://{host}:{port}"


def load_data_from_ml_data_server(data_tags=None) -> datasets.Dataset:
    """All data matching the tags (default: the learner's, from FLOPS_DATA_TAGS) as one dataset."""
    tags = list(data_tags) if data_tags else data_tags_from_env()
    if not tags:
        raise DataLoadingError(f"no data tags given (set {TAGS_ENV} or pass data_tags)")
    location = server_location()
    options = flight.FlightCallOptions(timeout=TIMEOUT_S)
    criteria = json.dumps({"data_tags": tags}).encode()
    tables = []
    try:
        with flight.connect(location) as client:
            # Listed in full first: reading streams while the listing is open nests pyarrow's
            # signal handlers ("Signal stop source already set up").
            infos = list(client.list_flights(criteria=criteria, options=options))
            for info in infos:
                # Always fetch through our own connection: servers often advertise 0.0.0.0.
                for endpoint in info.endpoints:
                    tables.append(client.do_get(endpoint.ticket, options=options).read_all())
    except flight.FlightUnavailableError as e:
        raise DataLoadingError(f"ML data server {location} is unreachable: {e}") from e
    except flight.FlightError as e:
        raise DataLoadingError(f"ML data server {location} failed: {e}") from e
    if not tables:
        raise DataLoadingError(f"ML data server {location} has no data for the tags {tags}")
    columns = {tuple(t.column_names) for t in tables}
    if len(columns) > 1:
        # Joining them would pad every partition with null columns of the others.
        raise DataLoadingError(
            f"the data for the tags {tags} have incompatible schemas: columns "
            + " vs ".join(str(list(c)) for c in sorted(columns))
        )
    try:
        table = pyarrow.concat_tables(tables, promote_options="default")
    except pyarrow.ArrowInvalid as e:
        raise DataLoadingError(f"the data for the tags {tags} have incompatible schemas: {e}") from e
    # Straight from Arrow (no pandas round trip, which mangles nested columns). The schema keeps
    # the `huggingface` metadata that Dataset.to_parquet wrote, from which datasets restores the
    # features (Image, ClassLabel, ...), so images still decode after with_format("numpy").
    return datasets.Dataset(datasets.table.InMemoryTable(table)).with_format("arrow")
