import pyarrow
import pytest

import data_loading


def test_matching_tags_are_fetched_and_joined(data_server):
    ds = data_loading.load_data_from_ml_data_server(["synthetic-a", "synthetic-b", "other"])
    assert ds.num_rows == 400
    assert ds.column_names == ["x1", "x2", "label"]
    assert isinstance(ds[:3], pyarrow.Table)  # arrow format, as flops_utils documents
    assert data_server.requests == [["synthetic-a", "synthetic-b", "other"]]


def test_tags_come_from_the_environment(data_server, monkeypatch):
    monkeypatch.setenv("FLOPS_DATA_TAGS", " synthetic-b ,")
    assert data_loading.load_data_from_ml_data_server().num_rows == 200
    assert data_server.requests == [["synthetic-b"]]


def test_flops_utils_load_dataset_uses_this_module(data_server, monkeypatch):
    from flops_utils.ml_repo_building_blocks import load_dataset

    monkeypatch.setenv("FLOPS_DATA_TAGS", "synthetic-a")
    assert load_dataset().num_rows == 200


def test_no_matching_data_is_a_clear_error(data_server):
    with pytest.raises(data_loading.DataLoadingError, match=r"no data for the tags \['nope'\]"):
        data_loading.load_data_from_ml_data_server(["nope"])


def test_no_tags_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("FLOPS_DATA_TAGS", raising=False)
    with pytest.raises(data_loading.DataLoadingError, match="no data tags"):
        data_loading.load_data_from_ml_data_server()


def test_unreachable_server_names_it(monkeypatch):
    from conftest import free_port

    port = free_port()
    monkeypatch.setenv("ML_DATA_SERVER_HOST", "127.0.0.1")
    monkeypatch.setenv("ML_DATA_SERVER_PORT", str(port))
    with pytest.raises(data_loading.DataLoadingError, match=f"127.0.0.1:{port} is unreachable"):
        data_loading.load_data_from_ml_data_server(["synthetic-a"])


def test_default_server_is_the_docker_host(monkeypatch):
    monkeypatch.delenv("ML_DATA_SERVER_HOST", raising=False)
    monkeypatch.delenv("ML_DATA_SERVER_PORT", raising=False)
    assert data_loading.server_location() == "grpc+tcp://172.17.0.1:11027"
