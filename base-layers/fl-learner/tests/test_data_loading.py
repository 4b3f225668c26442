import json
import subprocess
import sys

import datasets
import numpy as np
import pyarrow
import pyarrow.flight as flight
import pytest

import data_loading
import flight_server
from conftest import HERE, free_port, learner_env, wait_for

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_image_partitions_come_back_with_their_features(data_server):
    ds = data_loading.load_data_from_ml_data_server(["images-a", "images-b", "other"])
    assert ds.num_rows == 260
    assert ds.column_names == ["image", "label"]
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"] == datasets.ClassLabel(names=flight_server.CLASS_NAMES)
    # Arrow format, as flops_utils documents: the images as FLOps stores them, PNG bytes.
    first = ds[:3]
    assert isinstance(first, pyarrow.Table)
    assert first.column("image")[0]["bytes"].as_py().startswith(PNG_MAGIC)
    assert data_server.requests == [["images-a", "images-b", "other"]]


def test_images_decode_with_numpy_format(data_server):
    ds = data_loading.load_data_from_ml_data_server(["images-a", "images-b"])
    for d in (ds.with_format("numpy"), _set_numpy(ds)):
        images, labels = d["image"], d["label"]
        assert isinstance(images, np.ndarray) and images.shape == (260, 12, 12), type(images)
        assert images.dtype == np.uint8 and images.max() > 150
        assert isinstance(labels, np.ndarray) and set(labels.tolist()) == {0, 1, 2}
    # Row access decodes through Pillow too (the "python" format gives PIL images).
    row = ds.with_format(None)[0]
    assert row["image"].size == (12, 12) and row["image"].mode == "L"
    assert ds.features["label"].int2str(row["label"]) in flight_server.CLASS_NAMES


def _set_numpy(ds):
    ds = ds.with_format(None)
    ds.set_format("numpy")
    return ds


def test_served_partitions_are_shaped_as_flops_sends_them(data_server):
    """datasets' to_parquet output: image structs and the `huggingface` schema metadata."""
    table = data_server.tables["images-a"]
    image = table.schema.field("image").type
    assert pyarrow.types.is_struct(image)
    assert {image.field(i).name for i in range(image.num_fields)} == {"bytes", "path"}
    meta = json.loads(table.schema.metadata[b"huggingface"])
    assert meta["info"]["features"]["image"]["_type"] == "Image"
    assert meta["info"]["features"]["label"]["names"] == flight_server.CLASS_NAMES
    # Different partitions, not copies.
    other = data_server.tables["images-b"]
    assert not table.slice(0, other.num_rows).column("image").equals(other.column("image"))


def test_tensor_features_read_as_rows_and_arrays(monkeypatch):
    """Array2D columns are datasets extension arrays; pyarrow 20+ calls their to_pylist with
    arguments datasets < 3.6 does not take (requirements.txt excludes that pair)."""
    features = datasets.Features(
        {"x": datasets.Array2D((2, 3), "float32"), "label": datasets.ClassLabel(names=["a", "b"])}
    )
    rng = np.random.default_rng(3)
    ds = datasets.Dataset.from_dict(
        {"x": rng.normal(size=(5, 2, 3)).astype(np.float32), "label": [0, 1, 0, 1, 1]}, features=features
    )
    port = free_port()
    server = flight_server.DataServer(
        f"grpc+tcp://127.0.0.1:{port}", {"tensors": flight_server.as_flops_sends(ds)}
    )
    monkeypatch.setenv("ML_DATA_SERVER_HOST", "127.0.0.1")
    monkeypatch.setenv("ML_DATA_SERVER_PORT", str(port))
    try:
        got = data_loading.load_data_from_ml_data_server(["tensors"])
    finally:
        server.shutdown()
    assert got.features["x"] == features["x"]
    rows = got.with_format(None)
    assert np.allclose(rows[0]["x"], ds[0]["x"]) and rows["label"] == [0, 1, 0, 1, 1]
    assert got.with_format("numpy")["x"].shape == (5, 2, 3)


def test_tabular_tags_still_work(data_server):
    ds = data_loading.load_data_from_ml_data_server(["synthetic-a", "synthetic-b"])
    assert ds.num_rows == 400
    assert ds.column_names == ["x1", "x2", "label"]
    assert ds.with_format("numpy")["x1"].shape == (400,)


def test_tags_come_from_the_environment(data_server, monkeypatch):
    monkeypatch.setenv("FLOPS_DATA_TAGS", " images-b ,")
    assert data_loading.load_data_from_ml_data_server().num_rows == 100
    assert data_server.requests == [["images-b"]]


def test_flops_utils_load_dataset_uses_this_module(data_server, monkeypatch):
    from flops_utils.ml_repo_building_blocks import load_dataset

    monkeypatch.setenv("FLOPS_DATA_TAGS", "images-a")
    ds = load_dataset()
    assert ds.num_rows == 160
    assert ds.with_format("numpy")["image"].shape == (160, 12, 12)


def test_incompatible_partitions_are_a_clear_error(data_server):
    with pytest.raises(data_loading.DataLoadingError, match="incompatible schemas"):
        data_loading.load_data_from_ml_data_server(["images-a", "synthetic-a"])


def test_no_matching_data_is_a_clear_error(data_server):
    with pytest.raises(data_loading.DataLoadingError, match=r"no data for the tags \['nope'\]"):
        data_loading.load_data_from_ml_data_server(["nope"])


def test_no_tags_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("FLOPS_DATA_TAGS", raising=False)
    with pytest.raises(data_loading.DataLoadingError, match="no data tags"):
        data_loading.load_data_from_ml_data_server()


def test_unreachable_server_names_it(monkeypatch):
    port = free_port()
    monkeypatch.setenv("ML_DATA_SERVER_HOST", "127.0.0.1")
    monkeypatch.setenv("ML_DATA_SERVER_PORT", str(port))
    with pytest.raises(data_loading.DataLoadingError, match=f"127.0.0.1:{port} is unreachable"):
        data_loading.load_data_from_ml_data_server(["images-a"])


def test_default_server_is_the_docker_host(monkeypatch):
    monkeypatch.delenv("ML_DATA_SERVER_HOST", raising=False)
    monkeypatch.delenv("ML_DATA_SERVER_PORT", raising=False)
    assert data_loading.server_location() == "grpc+tcp://172.17.0.1:11027"


def rows_served(extra_args, tags):
    """Runs `python flight_server.py HOST:PORT [extra_args]` (as the image tests, the
    aggregator's tests and the e2e run it) and returns its rows per tag for `tags`."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "flight_server.py"), f"127.0.0.1:{port}", *extra_args],
        env=learner_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == f"serving on 127.0.0.1:{port}"
        criteria = json.dumps({"data_tags": tags})
        with flight.connect(f"grpc+tcp://127.0.0.1:{port}") as client:
            infos = list(client.list_flights(criteria.encode()))
            return {i.descriptor.path[0].decode(): i.total_records for i in infos}
    finally:
        proc.terminate()
        assert wait_for(lambda: proc.poll() is not None, 10)


def test_flight_server_script_serves_every_tag():
    rows = rows_served([], ["images-a", "images-b", "synthetic-a", "synthetic-b"])
    assert rows == {"images-a": 160, "images-b": 100, "synthetic-a": 200, "synthetic-b": 200}


def test_cifar10_partitions_come_back_shaped_as_cifar10(monkeypatch):
    """The CNN fixtures' data (flight_server.py --dataset cifar10): Hugging Face CIFAR-10's
    columns, 32x32 RGB PNGs and its ten label names, decoded to (n, 32, 32, 3) uint8."""
    port = free_port()
    server = flight_server.DataServer(f"grpc+tcp://127.0.0.1:{port}", flight_server.cifar10_tables())
    monkeypatch.setenv("ML_DATA_SERVER_HOST", "127.0.0.1")
    monkeypatch.setenv("ML_DATA_SERVER_PORT", str(port))
    try:
        ds = data_loading.load_data_from_ml_data_server(["cifar10-a", "cifar10-b"])
    finally:
        server.shutdown()
    assert ds.num_rows == 360 and ds.column_names == ["img", "label"]
    assert isinstance(ds.features["img"], datasets.Image)
    assert ds.features["label"] == datasets.ClassLabel(names=flight_server.CIFAR10_CLASS_NAMES)
    assert ds[:1].column("img")[0]["bytes"].as_py().startswith(PNG_MAGIC)
    images, labels = ds.with_format("numpy")["img"], ds.with_format("numpy")["label"]
    assert images.shape == (360, 32, 32, 3) and images.dtype == np.uint8
    assert set(labels.tolist()) == set(range(10))
    assert ds.with_format(None)[0]["img"].mode == "RGB"


def test_flight_server_script_adds_cifar10_on_request():
    rows = rows_served(["--dataset", "cifar10"], ["cifar10-a", "cifar10-b", "images-a"])
    assert rows == {"cifar10-a": 200, "cifar10-b": 160, "images-a": 160}
