"""An Arrow Flight server speaking the FLOps ML data server's protocol, for tests.

list_flights takes criteria `{"data_tags": [...]}` and lists one flight per matching tag;
do_get streams it. `python flight_server.py HOST:PORT [--dataset cifar10]` serves these tags
(and prints `serving on HOST:PORT` once it listens):

    images-a     160 rows  } image partitions shaped as FLOps sends MNIST:
    images-b     100 rows  } columns `image` (datasets.Image) and `label` (datasets.ClassLabel)
    synthetic-a  200 rows  } plain numeric data: columns x1, x2 (float64) and
    synthetic-b  200 rows  } label (int64) = x1 + x2 > 0

and, with `--dataset cifar10`, also (only then: the CNN fixtures need them, the rest do not pay
for making them):

    cifar10-a    200 rows  } partitions shaped as Hugging Face's CIFAR-10 (uoft-cs/cifar10):
    cifar10-b    160 rows  } `img` (datasets.Image, 32x32 RGB PNGs) and `label` (ClassLabel,
                           } CIFAR10_CLASS_NAMES)

Image partitions are made the way FLOps' data provider makes them: a `datasets.Dataset` with
an Image feature (12x12 grayscale PNGs) and a ClassLabel feature (CLASS_NAMES: a ring, a
vertical bar, a horizontal dash, each jittered by a pixel and noisy) written with
`Dataset.to_parquet`, so `image` is a struct {bytes: PNG, path: null} and the schema's
`huggingface` metadata carries the features, then read back with pyarrow.parquet and served
as is. A logistic regression on the flattened pixels learns them in one Flower round.
The CIFAR-shaped pictures are not photographs: class k is a square of its own colour at its own
place on a noisy background, so a tiny CNN learns them in an epoch or two.
"""

import argparse
import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.flight as flight
import pyarrow.parquet

IMAGE_SIZE = 12
CLASS_NAMES = ["ring", "bar", "dash"]
IMAGE_TAGS = {"images-a": (160, 11), "images-b": (100, 12)}  # tag: (rows, seed)
CIFAR10_SIZE = 32
# uoft-cs/cifar10's label names, in its order.
CIFAR10_CLASS_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]
CIFAR10_TAGS = {"cifar10-a": (200, 21), "cifar10-b": (160, 22)}  # tag: (rows, seed)
# --dataset: "glyphs" serves the default tags only, "cifar10" the cifar10-* tags too.
DATASETS = ("glyphs", "cifar10")


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


def cifar_picture(label: int, rng) -> np.ndarray:
    """A uint8 32x32x3 picture of class `label`: a 12x12 square of the class's colour at the
    class's place (jittered by 2 px) on a dim noisy background."""
    pixels = rng.uniform(0, 70, size=(CIFAR10_SIZE, CIFAR10_SIZE, 3))
    colour = np.array([(label * 37) % 256, (label * 91 + 60) % 256, (label * 53 + 120) % 256])
    dy, dx = (int(d) for d in rng.integers(-2, 3, size=2))
    row, col = 4 + 12 * (label // 5) + dy, 2 + 4 * (label % 5) + dx  # 2..18 and 0..20
    pixels[row : row + 12, col : col + 12] = colour * rng.uniform(0.8, 1.0)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def cifar10_partition(n: int, seed: int) -> pyarrow.Table:
    """n labelled 32x32 RGB images with CIFAR-10's columns and label names, as FLOps sends a
    CIFAR-10 partition (through datasets' parquet writer and back)."""
    import datasets
    from PIL import Image

    datasets.disable_progress_bars()
    rng = np.random.default_rng(seed)
    labels = [int(label) for label in rng.integers(0, len(CIFAR10_CLASS_NAMES), size=n)]
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR10_CLASS_NAMES)}
    )
    images = [Image.fromarray(cifar_picture(label, rng)) for label in labels]  # (32, 32, 3) uint8: RGB
    return as_flops_sends(datasets.Dataset.from_dict({"img": images, "label": labels}, features=features))


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
    """Every tag above but cifar10-* (built once per process; tables are immutable)."""
    return dict(_default_tables())


@functools.lru_cache(maxsize=1)
def _cifar10_tables() -> tuple:
    return tuple((tag, cifar10_partition(n, seed)) for tag, (n, seed) in CIFAR10_TAGS.items())


def cifar10_tables() -> dict:
    """The cifar10-* tags (built once per process)."""
    return dict(_cifar10_tables())


def tables_for(dataset: str) -> dict:
    """What the script serves with --dataset: the default tags, plus cifar10-* for cifar10."""
    tables = default_tables()
    if dataset == "cifar10":
        tables.update(cifar10_tables())
    return tables


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="FLOps-shaped ML data over Arrow Flight, for tests")
    parser.add_argument("address", nargs="?", default="127.0.0.1:11027", help="HOST:PORT")
    parser.add_argument("--dataset", choices=DATASETS, default="glyphs", help="cifar10 adds the cifar10-* tags")
    args = parser.parse_args()
    server = DataServer(f"grpc+tcp://{args.address}", tables_for(args.dataset))
    print(f"serving on {args.address}", flush=True)
    server.serve()
