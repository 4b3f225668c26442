"""An Arrow Flight server speaking the FLOps ML data server's protocol, for tests.

list_flights takes criteria `{"data_tags": [...]}` and lists one flight per matching tag;
do_get streams it. `python flight_server.py HOST:PORT` serves these tags (and prints
`serving on HOST:PORT` once it listens):

    images-a     160 rows  } image partitions shaped as FLOps sends MNIST / CIFAR-10:
    images-b     100 rows  } columns `image` (datasets.Image) and `label` (datasets.ClassLabel)
    synthetic-a  200 rows  } plain numeric data: columns x1, x2 (float64) and
    synthetic-b  200 rows  } label (int64) = x1 + x2 > 0

Image partitions are made the way FLOps' data provider makes them: a `datasets.Dataset` with
an Image feature (12x12 grayscale PNGs) and a ClassLabel feature (CLASS_NAMES: a ring, a
vertical bar, a horizontal dash, each jittered by a pixel and noisy) written with
`Dataset.to_parquet`, so `image` is a struct {bytes: PNG, path: null} and the schema's
`huggingface` metadata carries the features, then read back with pyarrow.parquet and served
as is. A logistic regression on the flattened pixels learns them in one Flower round.
"""

import functools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.flight as flight
import pyarrow.parquet

IMAGE_SIZE = 12
CLASS_NAMES = ["ring", "bar", "dash"]
IMAGE_TAGS = {"images-a": (160, 11), "images-b": (100, 12)}  # tag: (rows, seed)


def synthetic(n: int, seed: int) -> pyarrow.Table:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    label = (x1 + x2 > 0).astype(np.int64)
    return pyarrow.table({"x1": x1, "x2": x2, "label": label})


def glyph(label: int, rng) -> np.ndarray:
    """A uint8 IMAGE_SIZE x IMAGE_SIZE picture of class `label`."""
    shape = np.zeros((IMAGE_SIZE, IMAGE_SIZE))
    if label == 0:  # ring, 2 px thick
        shape[2:10, 2:10] = 1
        shape[4:8, 4:8] = 0
    elif label == 1:  # vertical bar
        shape[2:10, 5:7] = 1
    else:  # horizontal dash
        shape[5:7, 2:10] = 1
    shape = np.roll(shape, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
    pixels = shape * rng.uniform(150, 255) + rng.uniform(0, 60, size=shape.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def image_partition(n: int, seed: int) -> pyarrow.Table:
    """n labelled images, through datasets' own parquet writer and back (as FLOps does)."""
    import datasets
    from PIL import Image

    datasets.disable_progress_bars()
    rng = np.random.default_rng(seed)
    labels = [int(label) for label in rng.integers(0, len(CLASS_NAMES), size=n)]
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)}
    )
    images = [Image.fromarray(glyph(label, rng)) for label in labels]
    return as_flops_sends(datasets.Dataset.from_dict({"image": images, "label": labels}, features=features))


def as_flops_sends(ds) -> pyarrow.Table:
    """A datasets.Dataset as FLOps' data provider hands it to the ML data server: through
    Dataset.to_parquet (features in the schema's `huggingface` metadata) and pyarrow.parquet."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "partition.parquet"
        ds.to_parquet(str(path))
        return pyarrow.parquet.read_table(path)


class DataServer(flight.FlightServerBase):
    def __init__(self, location: str, tables: dict):
        super().__init__(location)
        self.tables = tables
        self.requests = []

    def _info(self, tag: str) -> flight.FlightInfo:
        table = self.tables[tag]
        descriptor = flight.FlightDescriptor.for_path(tag)
        # Advertise an unusable address, as the real server does (0.0.0.0).
        endpoint = flight.FlightEndpoint(tag, ["grpc+tcp://0.0.0.0:1"])
        return flight.FlightInfo(table.schema, descriptor, [endpoint], table.num_rows, -1)

    def list_flights(self, context, criteria):
        wanted = json.loads(criteria.decode())["data_tags"]
        self.requests.append(wanted)
        for tag in sorted(self.tables):
            if tag in wanted:
                yield self._info(tag)

    def do_get(self, context, ticket):
        return flight.RecordBatchStream(self.tables[ticket.ticket.decode()])


@functools.lru_cache(maxsize=1)
def _default_tables() -> tuple:
    tables = {tag: image_partition(n, seed) for tag, (n, seed) in IMAGE_TAGS.items()}
    tables.update({"synthetic-a": synthetic(200, 1), "synthetic-b": synthetic(200, 2)})
    return tuple(tables.items())


def default_tables() -> dict:
    """Every tag above (built once per process; tables are immutable)."""
    return dict(_default_tables())


if __name__ == "__main__":
    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:11027"
    server = DataServer(f"grpc+tcp://{address}", default_tables())
    print(f"serving on {address}", flush=True)
    server.serve()
