import threading

import main
from conftest import flower_result, free_port, start_flower, start_learner, wait_for


def test_learner_waits_for_the_aggregator_then_trains_one_round(data_server, ml_repo, observer):
    port = free_port()
    obs_addr, obs_msgs = observer
    learner = start_learner(
        ml_repo, ["p1", "127.0.0.1", obs_addr, f"127.0.0.1:{port}", "synthetic-a,synthetic-b"]
    )
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(learner.stdout), daemon=True)
    reader.start()
    try:
        # The learner starts first and must be retrying before the aggregator exists.
        retrying = wait_for(lambda: any("unavailable (attempt 1)" in l for l in lines), 120)
        assert retrying and learner.poll() is None, "".join(lines)
        server = start_flower(port)
        server_out, _ = server.communicate(timeout=120)
        assert server.returncode == 0, server_out
        learner.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        learner.kill()
    out = "".join(lines)
    assert learner.returncode == 0, out
    assert "training finished" in out, out
    result = flower_result(server_out)
    assert result["fit"] == 1 and result["evaluate"] == 1, result
    assert result["accuracy"] > 0.8, result
    assert obs_msgs == [], obs_msgs


def test_missing_data_is_published_as_failed(data_server, ml_repo, mqtt_messages, observer):
    obs_addr, obs_msgs = observer
    learner = start_learner(ml_repo, ["p-missing", "127.0.0.1", obs_addr, "127.0.0.1:1", "nope"])
    out, _ = learner.communicate(timeout=60)
    assert learner.returncode == 1, out
    assert wait_for(lambda: mqtt_messages), out
    [msg] = [m for m in mqtt_messages if m["flops_project_id"] == "p-missing"]
    assert "no data for the tags ['nope']" in msg["error_msg"], msg
    assert wait_for(lambda: obs_msgs), out
    assert obs_msgs[0].startswith("learner p-missing failed: DataLoadingError"), obs_msgs


def test_an_aggregator_that_never_comes_is_a_failure(data_server, ml_repo, mqtt_messages, observer):
    obs_addr, _ = observer
    port = free_port()
    learner = start_learner(
        ml_repo,
        ["p-wait", "127.0.0.1:9027", obs_addr, f"127.0.0.1:{port}", "synthetic-a", "--max-wait", "2"],
    )
    out, _ = learner.communicate(timeout=60)
    assert learner.returncode == 1, out
    assert wait_for(lambda: any(m["flops_project_id"] == "p-wait" for m in mqtt_messages)), out
    [msg] = [m for m in mqtt_messages if m["flops_project_id"] == "p-wait"]
    assert f"aggregator 127.0.0.1:{port} still unavailable" in msg["error_msg"], msg


def test_the_manager_command_line_is_exact():
    args = main.parse_args(["proj", "10.0.0.1", "10.0.0.2", "10.0.0.3", "a,b"])
    assert (args.flops_project_id, args.mqtt_ip, args.project_observer_ip) == (
        "proj",
        "10.0.0.1",
        "10.0.0.2",
    )
    assert (args.aggregator_ip, args.data_tags) == ("10.0.0.3", "a,b")


def test_host_port_splitting():
    assert main.split_host_port("10.0.0.3", 8080) == ("10.0.0.3", 8080)
    assert main.split_host_port("10.0.0.3:18080", 8080) == ("10.0.0.3", 18080)
    assert main.split_host_port("[::1]:9", 8080) == ("::1", 9)
    assert main.split_host_port("::1", 8080) == ("::1", 8080)
