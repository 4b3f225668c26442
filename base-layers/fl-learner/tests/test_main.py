import os
import signal
import socket
import uuid

import pytest

import main
from conftest import (
    IMAGE_TAGS,
    Output,
    flower_result,
    free_port,
    start_flower,
    start_learner,
    wait_for,
)


def unique(project: str) -> str:
    """Project ids are unique per run: other runs may share the rig's MQTT broker."""
    return f"{project}-{uuid.uuid4().hex[:8]}"


def manager_args(project, observer, port, tags=IMAGE_TAGS, *flags):
    return [project, "127.0.0.1", observer, f"127.0.0.1:{port}", tags, *flags]


def run_session(port: int, out: Output, learner, **server) -> dict:
    """One Flower server on the port, to its end; the learner must take part and stay healthy."""
    flower = start_flower(port, **server)
    server_out, _ = flower.communicate(timeout=180)
    assert flower.returncode == 0, server_out + "\n--- learner:\n" + str(out)
    result = flower_result(server_out)
    assert result["fit"] == 1 and result["evaluate"] == 1, result
    # The server held the one learner there is: no client left over from its earlier attempts.
    assert result["clients"] == [1], result
    assert result["accuracy"] > 0.8, (result, str(out))
    return result


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def expect(out: Output, learner, text: str, timeout: float) -> None:
    """Waits for a line of the learner's output; fails at once if the learner exited."""
    wait_for(lambda: out.has(text) or learner.poll() is not None, timeout)
    if learner.poll() is not None:
        out.finish()
    assert out.has(text), f"no {text!r} in the learner's output (exit {learner.poll()}):\n{out}"


def stop(learner):
    if learner.poll() is None:
        learner.kill()
        learner.wait(timeout=10)


def test_learner_waits_for_the_aggregator_then_trains_one_round(data_server, ml_repo, observer):
    port = free_port()
    obs_addr, obs_msgs = observer
    learner = start_learner(ml_repo, manager_args("p1", obs_addr, port))
    out = Output(learner)
    try:
        # The learner starts first and must be retrying before the aggregator exists.
        expect(out, learner, "unavailable (attempt 1)", 120)
        assert learner.poll() is None, str(out)
        run_session(port, out, learner)
        learner.wait(timeout=60)
    finally:
        stop(learner)
    text = out.finish()
    assert learner.returncode == 0, text
    assert "training session 1 finished" in text and "training finished" in text, text
    assert obs_msgs == [], obs_msgs


def test_learner_serves_consecutive_sessions_with_the_same_model(data_server, ml_repo, observer):
    port = free_port()
    obs_addr, obs_msgs = observer
    learner = start_learner(ml_repo, manager_args("p-two", obs_addr, port, IMAGE_TAGS, "--max-sessions", "2"))
    out = Output(learner)
    try:
        expect(out, learner, "unavailable (attempt 1)", 120)
        run_session(port, out, learner)
        expect(out, learner, "training session 1 finished", 30)
        # Between sessions the learner keeps waiting for the next aggregator on the same port.
        assert wait_for(lambda: out.count("unavailable (attempt") >= 2, 30), str(out)
        assert learner.poll() is None, str(out)
        run_session(port, out, learner)
        learner.wait(timeout=60)
    finally:
        stop(learner)
    text = out.finish()
    assert learner.returncode == 0, text
    assert "training session 2 finished" in text and "training finished" in text, text
    # Built and loaded once, reused by both sessions.
    assert out.count("MODEL_MANAGER built") == 1 and out.count("MODEL_MANAGER data loaded") == 1, text
    assert obs_msgs == [], obs_msgs


def test_by_default_the_learner_stays_until_sigterm(data_server, ml_repo, observer, mqtt_messages):
    port = free_port()
    obs_addr, obs_msgs = observer
    project = unique("p-svc")
    # The aggregator is there first; --max-wait bounds only the wait for that first session.
    flower = start_flower(port)
    assert wait_for(lambda: listening(port), 60), "the Flower server did not start"
    learner = start_learner(
        ml_repo,
        manager_args(project, obs_addr, port, IMAGE_TAGS, "--max-wait", "2"),
        FLOPS_LEARNER_MAX_SESSIONS="",
    )
    out = Output(learner)
    try:
        server_out, _ = flower.communicate(timeout=180)
        assert flower.returncode == 0, server_out + "\n--- learner:\n" + str(out)
        assert flower_result(server_out)["accuracy"] > 0.8, server_out
        expect(out, learner, "training session 1 finished", 30)
        # Well past --max-wait, the learner is still waiting for the next session.
        assert not wait_for(lambda: learner.poll() is not None, 6), str(out)
        assert out.count("unavailable (attempt") >= 4, str(out)
        learner.send_signal(signal.SIGTERM)
        assert wait_for(lambda: learner.poll() is not None, 10), "no exit 10 s after SIGTERM:\n" + str(out)
    finally:
        stop(learner)
        flower.kill()
    text = out.finish()
    assert learner.returncode == 0, text
    assert "received SIGTERM: stopping" in text, text
    assert "training finished" not in text, text
    assert obs_msgs == [] and not [m for m in mqtt_messages if m["flops_project_id"] == project]
    # Retrying is quiet: newer flwr's per-call deprecation banner once, no grpc thread noise.
    assert out.count("start_client() is deprecated") <= 1, text
    assert "Traceback" not in text, text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_a_session_stops_the_learner_at_once(data_server, ml_repo, observer, sig):
    port = free_port()
    obs_addr, obs_msgs = observer
    # The server waits for a second client that never comes: the learner sits connected.
    flower = start_flower(port, min_clients=2)
    learner = None
    try:
        assert wait_for(lambda: listening(port), 60), "the Flower server did not start"
        learner = start_learner(ml_repo, manager_args("p-sig", obs_addr, port))
        out = Output(learner)
        expect(out, learner, "joining aggregator", 120)
        assert not wait_for(lambda: learner.poll() is not None, 3), str(out)
        assert not out.has("unavailable"), str(out)
        learner.send_signal(sig)
        assert wait_for(lambda: learner.poll() is not None, 10), "no exit 10 s after the signal:\n" + str(out)
    finally:
        if learner:
            stop(learner)
        flower.kill()
        flower.wait(timeout=10)
    text = out.finish()
    assert learner.returncode == 0, text
    assert f"received {sig.name}: stopping" in text, text
    assert obs_msgs == [], obs_msgs


def test_a_model_failure_during_a_session_is_published_as_failed(
    data_server, ml_repo, mqtt_messages, observer
):
    port = free_port()
    obs_addr, obs_msgs = observer
    project = unique("p-fit")
    flower = start_flower(port)
    try:
        assert wait_for(lambda: listening(port), 60), "the Flower server did not start"
        learner = start_learner(ml_repo, manager_args(project, obs_addr, port), TEST_MODEL_FAIL="fit")
        out, _ = learner.communicate(timeout=120)
    finally:
        flower.kill()
        flower.wait(timeout=10)
    assert learner.returncode == 1, out
    assert "training session" not in out, out
    assert wait_for(lambda: any(m["flops_project_id"] == project for m in mqtt_messages)), out
    [msg] = [m for m in mqtt_messages if m["flops_project_id"] == project]
    assert msg["error_msg"] == "RuntimeError: training diverged", msg
    assert wait_for(lambda: obs_msgs), out
    assert obs_msgs == [f"learner {project} failed: RuntimeError: training diverged"], obs_msgs


def test_missing_data_is_published_as_failed(data_server, ml_repo, mqtt_messages, observer):
    obs_addr, obs_msgs = observer
    project = unique("p-missing")
    learner = start_learner(ml_repo, [project, "127.0.0.1", obs_addr, "127.0.0.1:1", "nope"])
    out, _ = learner.communicate(timeout=60)
    assert learner.returncode == 1, out
    assert wait_for(lambda: any(m["flops_project_id"] == project for m in mqtt_messages)), out
    [msg] = [m for m in mqtt_messages if m["flops_project_id"] == project]
    assert "no data for the tags ['nope']" in msg["error_msg"], msg
    assert wait_for(lambda: obs_msgs), out
    assert obs_msgs[0].startswith(f"learner {project} failed: DataLoadingError"), obs_msgs


def test_an_aggregator_that_never_comes_is_a_failure(data_server, ml_repo, mqtt_messages, observer):
    obs_addr, _ = observer
    port = free_port()
    project = unique("p-wait")
    learner = start_learner(
        ml_repo,
        [project, "127.0.0.1:9027", obs_addr, f"127.0.0.1:{port}", "images-a", "--max-wait", "2"],
    )
    out, _ = learner.communicate(timeout=60)
    assert learner.returncode == 1, out
    assert wait_for(lambda: any(m["flops_project_id"] == project for m in mqtt_messages)), out
    [msg] = [m for m in mqtt_messages if m["flops_project_id"] == project]
    assert f"aggregator 127.0.0.1:{port} still unavailable" in msg["error_msg"], msg


def process_resources(pid: int):
    """(threads, open sockets) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    sockets = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return threads, sockets


def test_failed_attempts_leave_nothing_behind(data_server, ml_repo, observer):
    # Every attempt opens a gRPC channel and a request stream (read by a gRPC thread); after
    # 20 more attempts the learner holds no more threads or sockets than after 5.
    obs_addr, _ = observer
    learner = start_learner(
        ml_repo, manager_args("p-leak", obs_addr, free_port()), FLOPS_LEARNER_RETRY_DELAY="0.1"
    )
    out = Output(learner)
    try:
        expect(out, learner, "unavailable (attempt 5)", 120)
        before = process_resources(learner.pid)
        expect(out, learner, "unavailable (attempt 25)", 120)
        after = process_resources(learner.pid)
    finally:
        stop(learner)
    assert after[0] <= before[0] + 1, f"threads {before[0]} -> {after[0]} over 20 attempts"
    assert after[1] <= before[1] + 1, f"sockets {before[1]} -> {after[1]} over 20 attempts"


def test_the_manager_command_line_is_exact(monkeypatch):
    for name in ("FLOPS_LEARNER_RETRY_DELAY", "FLOPS_LEARNER_MAX_WAIT", "FLOPS_LEARNER_MAX_SESSIONS"):
        monkeypatch.delenv(name, raising=False)
    args = main.parse_args(["proj", "10.0.0.1", "10.0.0.2", "10.0.0.3", "a,b"])
    assert (args.flops_project_id, args.mqtt_ip, args.project_observer_ip) == (
        "proj",
        "10.0.0.1",
        "10.0.0.2",
    )
    assert (args.aggregator_ip, args.data_tags) == ("10.0.0.3", "a,b")
    assert (args.retry_delay, args.max_wait, args.max_sessions) == (5.0, 1800.0, 0)


def test_retry_waits_start_short_and_double_up_to_the_retry_delay():
    # A learner up before its aggregator joins at most about its last wait after the server is.
    waits = [main.retry_wait(n, 5.0) for n in range(1, 8)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert [main.retry_wait(n, 0.1) for n in (1, 2)] == [0.1, 0.1]
    assert main.retry_wait(10_000, 5.0) == 5.0


def test_flags_take_their_defaults_from_the_environment(monkeypatch):
    monkeypatch.setenv("FLOPS_LEARNER_RETRY_DELAY", "2.5")
    monkeypatch.setenv("FLOPS_LEARNER_MAX_WAIT", "0")
    monkeypatch.setenv("FLOPS_LEARNER_MAX_SESSIONS", "3")
    args = main.parse_args(["p", "m", "o", "a", "t"])
    assert (args.retry_delay, args.max_wait, args.max_sessions) == (2.5, 0.0, 3)
    args = main.parse_args(["p", "m", "o", "a", "t", "--max-sessions", "1"])
    assert args.max_sessions == 1
    monkeypatch.setenv("FLOPS_LEARNER_MAX_SESSIONS", "-1")
    with pytest.raises(SystemExit, match="FLOPS_LEARNER_MAX_SESSIONS='-1'"):
        main.parse_args(["p", "m", "o", "a", "t"])


def test_host_port_splitting():
    assert main.split_host_port("10.0.0.3", 8080) == ("10.0.0.3", 8080)
    assert main.split_host_port("10.0.0.3:18080", 8080) == ("10.0.0.3", 18080)
    assert main.split_host_port("[::1]:9", 8080) == ("::1", 9)
    assert main.split_host_port("::1", 8080) == ("::1", 8080)
