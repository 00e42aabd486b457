"""core.tracking against real MLflow stores: the embedded sqlite store, a real ``mlflow server``
started by the tests, an unreachable server and a server killed in the middle of a run."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import core
from core import tracking, tracking_store, tracking_sync
from core.tracking import Tracker, find_finished_runs, flatten_config, resolve_tracking_uri, runs_frame
from tests.helpers import free_port

RUNTIME_TAGS = ("vsbench.version", "git.commit", "torch.version", "cuda.version", "device")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test runs in its own empty working directory with no tracking URI in the environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def _client(tmp_path: Path, db: str = "mlflow.db") -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path / db}")


def _only_run(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


# --------------------------------------------------------------------------------------------
# Pure helpers


@dataclasses.dataclass
class _Opt:
    lr: float = 0.1
    betas: tuple = (0.9, 0.999)


def test_flatten_config():
    flat = flatten_config(
        {"method": {"name": "moco", "queue": {"size": 4096}}, "crop": [112, 112], "tags": ("a", "b"), "extra": {}, "opt": _Opt(), "none": None}
    )
    assert flat == {
        "method.name": "moco",
        "method.queue.size": "4096",
        "crop": "[112, 112]",
        "tags": '["a", "b"]',
        "extra": "{}",
        "opt.lr": "0.1",
        "opt.betas": "[0.9, 0.999]",
        "none": "None",
    }


def test_resolve_tracking_uri(monkeypatch):
    assert resolve_tracking_uri() == tracking_store.DEFAULT_URI == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri() == "http://env:5000"
    assert resolve_tracking_uri("http://explicit:5000") == "http://explicit:5000"


# --------------------------------------------------------------------------------------------
# The embedded sqlite store


def test_sqlite_store_round_trip(_isolated):
    tmp = _isolated
    config_file = tmp / "config.toml"
    config_file.write_text('[method]\nname = "moco"\n')
    config = {
        "method": {"name": "moco", "temperature": 0.07, "queue": {"size": 4096}},
        "data": {"crop": [112, 112], "frames": 16},
        "notes": "x" * 7000,  # over MLflow's 6000-character limit for param values
    }
    with Tracker("suite-a", "moco-r3d-s0", tags={"dataset_fingerprint": "fp123", "config_hash": "c0ffee"}, flush_every=64) as t:
        assert t.tracking_uri == f"sqlite:///{tmp / 'mlflow.db'}"
        t.log_params(config)
        t.set_tags({"protocol.retrieval": "r1"})
        for step in range(500):
            t.log_metrics({"loss": 1.0 / (step + 1), "loss/nce": 0.5, "lr": 0.03, "clips_per_s": 100.0 + step}, step=step)
        t.log_artifact(config_file, artifact_path="config")
        t.log_dict({"r@1": 0.25, "k": [1, 5]}, "eval/summary.json")
        run_id = t.run_id
    assert t.status == "FINISHED"

    client = _client(tmp)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["method.name"] == "moco"
    assert params["method.temperature"] == "0.07"
    assert params["method.queue.size"] == "4096"
    assert params["data.crop"] == "[112, 112]"
    assert len(params["notes"]) == tracking.MAX_PARAM_LENGTH and "truncated from 7000 chars" in params["notes"]
    tags = run.data.tags
    assert tags[tracking.TRUNCATED_TAG] == "notes"
    for key in RUNTIME_TAGS:
        assert tags[key], key
    assert tags["vsbench.version"] == core.__version__
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"  # MLflow's run-context tags
    assert tags["dataset_fingerprint"] == "fp123" and tags["config_hash"] == "c0ffee" and tags["protocol.retrieval"] == "r1"
    assert run.info.run_name == "moco-r3d-s0"
    # tagged as model training: MLflow 3's UI opens the runs table, not its GenAI view
    assert client.get_experiment_by_name("suite-a").tags["mlflow.experimentKind"] == "custom_model_development"

    history = client.get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: (m.timestamp, m.step))] == list(range(500))
    assert sorted(m.step for m in history) == list(range(500))
    assert {m.step: m.value for m in history}[9] == pytest.approx(0.1)
    assert len(client.get_metric_history(run_id, "loss/nce")) == 500
    assert run.data.metrics["clips_per_s"] == 599.0

    # artifacts in ./mlartifacts, nothing in ./mlruns
    art = tmp / "mlartifacts" / run_id / "artifacts"
    assert (art / "config" / "config.toml").read_text() == config_file.read_text()
    assert '"r@1": 0.25' in (art / "eval" / "summary.json").read_text()
    assert {a.path for a in client.list_artifacts(run_id)} == {"config", "eval"}
    assert not (tmp / "mlruns").exists()


def test_parent_and_child_runs(_isolated):
    with Tracker("suite-b", "suite-invocation") as parent:
        children = []
        for seed in (0, 1):
            with Tracker("suite-b", f"moco-s{seed}", parent_run_id=parent.run_id, tags={"seed": str(seed)}) as child:
                child.log_params({"seed": seed, "method": {"name": "moco"}})
                child.log_metrics({"eval/retrieval/r1": 0.1 * (seed + 1)}, step=0)
                children.append(child.run_id)
    client = _client(_isolated)
    for run_id in children:
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == parent.run_id

    frame = runs_frame("suite-b", parent_run_id=parent.run_id)
    assert list(frame["run_id"]) == children
    assert list(frame["parent_run_id"]) == [parent.run_id] * 2
    assert list(frame["params.seed"]) == ["0", "1"]
    assert list(frame["metrics.eval/retrieval/r1"]) == pytest.approx([0.1, 0.2])
    assert list(frame["status"]) == ["FINISHED", "FINISHED"]
    assert "tags.git.commit" in frame.columns

    everything = runs_frame("suite-b")
    assert set(everything["run_id"]) == {parent.run_id, *children}
    assert runs_frame("no-such-suite").empty


def test_params_are_immutable_and_keys_made_valid(_isolated, caplog):
    caplog.set_level(logging.WARNING, logger="core.tracking")
    with Tracker("suite-k", "keys") as t:
        t.log_params({"opt": {"lr": 0.1}})
        t.log_params({"opt": {"lr": 0.2, "wd": 1e-4}})  # lr changed: the first value stays
        t.log_metrics({"eval/retrieval/r@1": 0.5, "bad": "n/a"}, step=0)
    run = _client(_isolated).get_run(t.run_id)
    assert run.data.params == {"opt.lr": "0.1", "opt.wd": "0.0001"}
    assert run.data.metrics == {"eval/retrieval/r_1": 0.5}
    assert "opt.lr" in caplog.text and "r@1" in caplog.text and "not a number" in caplog.text


def test_exception_marks_the_run_failed(_isolated):
    with pytest.raises(RuntimeError, match="diverged"):
        with Tracker("suite-c", "boom") as t:
            t.log_metrics({"loss": float("nan")}, step=0)
            raise RuntimeError("diverged")
    with pytest.raises(KeyboardInterrupt):
        with Tracker("suite-c", "ctrl-c") as k:
            raise KeyboardInterrupt
    client = _client(_isolated)
    run = client.get_run(t.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[tracking.ERROR_TAG] == "RuntimeError: diverged"
    [nan] = client.get_metric_history(t.run_id, "loss")
    assert nan.value != nan.value  # NaN is logged as is
    assert client.get_run(k.run_id).info.status == "KILLED"


_LEFT_OPEN = """
import sys
from core.tracking import Tracker
t = Tracker("exit", "left-open", tracking_uri=sys.argv[1], flush_every=3)
for step in range(10):
    t.log_metrics({"m": float(step)}, step=step)
"""


def test_a_tracker_left_open_at_exit_keeps_every_value_and_ends_killed(_isolated):
    subprocess.run([sys.executable, "-c", _LEFT_OPEN, f"sqlite:///{_isolated / 'mlflow.db'}"], check=True, timeout=300)
    client = _client(_isolated)
    run = _only_run(client, "exit")
    assert run.info.status == "KILLED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "m")) == list(range(10))  # the batch in flight too


def test_disabled_tracker_creates_nothing(_isolated, monkeypatch):
    t = Tracker("suite-d", "off", enabled=False)
    monkeypatch.setenv("RANK", "1")  # torchrun's non-zero rank: off by default
    r1 = Tracker("suite-d", "rank1")
    for tr in (t, r1):
        assert not tr.enabled and tr.run_id is None and tr.experiment_id is None
        with tr:
            tr.log_params({"a": 1})
            tr.set_tags({"b": "2"})
            tr.log_metrics({"loss": 1.0}, step=0)
            tr.log_artifact(__file__)
            tr.log_dict({"x": 1}, "x.json")
            tr.flush()
    assert list(_isolated.iterdir()) == []


def test_find_finished_runs(_isolated):
    for name, config_hash, fail in (("a", "h1", False), ("b", "h2", False), ("c", "h1", True)):
        t = Tracker("suite-e", name, tags={"config_hash": config_hash})
        t.finish("FAILED" if fail else "FINISHED")
        if name == "a":
            done = t.run_id
    assert find_finished_runs("suite-e", "config_hash", "h1") == [done]
    assert find_finished_runs("suite-e", "config_hash", "h3") == []
    assert find_finished_runs("no-such-suite", "config_hash", "h1") == []
    # a store that does not exist has no runs, and is not created by asking
    assert find_finished_runs("suite-e", "config_hash", "h1", tracking_uri="sqlite:///elsewhere.db") == []
    assert not (_isolated / "elsewhere.db").exists()


# --------------------------------------------------------------------------------------------
# A real tracking server


@dataclasses.dataclass
class _Server:
    uri: str
    proc: subprocess.Popen
    root: Path

    def kill(self) -> None:
        """SIGKILL the server's process group (the CLI and its uvicorn worker) and wait for the port to close."""
        _signal_group(self.proc, signal.SIGKILL)
        self.proc.wait(timeout=30)
        port = int(self.uri.rsplit(":", 1)[1])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) != 0:
                    return
            time.sleep(0.1)
        raise AssertionError(f"{self.uri} still accepts connections after SIGKILL")


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group the test created with start_new_session
    except ProcessLookupError:
        pass


def _mlflow_executable() -> Path:
    exe = Path(sys.executable).with_name("mlflow")
    if not exe.exists():
        pytest.skip(f"no mlflow executable beside {sys.executable}")
    return exe


def _start_server(tmp_path_factory, servers: list[_Server], again: _Server | None = None) -> _Server:
    """A new server, or ``again`` (a killed one) restarted on its port and database."""
    root = again.root if again else tmp_path_factory.mktemp("mlflow-server")
    port = int(again.uri.rsplit(":", 1)[1]) if again else free_port()
    uri = f"http://127.0.0.1:{port}"
    log_file = open(root / "server.log", "ab")
    cmd = [
        str(_mlflow_executable()), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    log_file.close()
    server = _Server(uri, proc, root)
    servers.append(server)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{(root / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=1) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"mlflow server at {uri} did not answer /health:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.2)


def _stop_servers(servers: list[_Server]) -> None:
    """Stop every server and any worker left in its process group."""
    for server in servers:
        _signal_group(server.proc, signal.SIGTERM)
        try:
            server.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            _signal_group(server.proc, signal.SIGKILL)
            server.proc.wait(timeout=15)
        _signal_group(server.proc, signal.SIGKILL)  # any worker left in the group


@pytest.fixture
def mlflow_server(tmp_path_factory):
    """Start real ``mlflow server`` processes on free local ports; all are stopped at teardown."""
    servers: list[_Server] = []
    yield lambda again=None: _start_server(tmp_path_factory, servers, again)
    _stop_servers(servers)


@pytest.fixture(scope="module")
def healthy_server(tmp_path_factory):
    """One real ``mlflow server`` shared by the tests that neither stop nor restart it."""
    servers: list[_Server] = []
    yield _start_server(tmp_path_factory, servers)
    _stop_servers(servers)


@pytest.mark.slow
def test_server_run_is_readable_from_the_server(_isolated, healthy_server, caplog):
    caplog.set_level(logging.WARNING, logger="core")
    server = healthy_server
    with Tracker("suite-srv", "parent", tracking_uri=server.uri) as parent:
        with Tracker("suite-srv", "moco-s0", tracking_uri=server.uri, parent_run_id=parent.run_id, tags={"config_hash": "abc"}) as t:
            assert t.server == server.uri and t.tracking_uri == f"sqlite:///{_isolated / tracking_store.OUTBOX_DB}"
            assert t.server_run_id is not None  # on the server from its start
            t.log_params({"method": {"name": "moco", "dim": 128}})
            for step in range(300):
                t.log_metrics({"loss": 10.0 - step / 100}, step=step)
            t.log_dict({"r@1": 0.5}, "eval/summary.json")
    assert not caplog.records, caplog.text
    assert not (_isolated / "mlflow.db").exists()

    client = MlflowClient(server.uri)
    run = client.get_run(t.server_run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "moco-s0"
    assert run.data.params == {"method.name": "moco", "method.dim": "128"}
    assert run.data.tags["mlflow.parentRunId"] == parent.server_run_id != parent.run_id
    assert not {tracking_sync.SERVER_TAG, tracking_sync.SYNCED_TAG, tracking_sync.COMPLETE_TAG} & set(run.data.tags)
    assert sorted(m.step for m in client.get_metric_history(t.server_run_id, "loss")) == list(range(300))
    assert [a.path for a in client.list_artifacts(t.server_run_id, "eval")] == ["eval/summary.json"]
    assert find_finished_runs("suite-srv", "config_hash", "abc", tracking_uri=server.uri) == [t.server_run_id]
    frame = runs_frame("suite-srv", tracking_uri=server.uri, parent_run_id=parent.server_run_id)
    assert list(frame["run_id"]) == [t.server_run_id]
    # the local copy is complete, so a sync has nothing to copy
    assert _client(_isolated, tracking_store.OUTBOX_DB).get_run(t.run_id).data.tags[tracking_sync.COMPLETE_TAG] == "complete"
    assert tracking_sync.sync_outbox(server.uri) == {}


@pytest.mark.slow
def test_only_the_main_thread_gives_the_server_a_short_http_budget(_isolated, healthy_server, monkeypatch):
    for name in tracking_store.HTTP_BUDGET:  # unset for this test, and unset again after it
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    server = healthy_server
    runs = []

    def track():
        with Tracker("suite-env", "in-a-thread", tracking_uri=server.uri) as t:
            t.log_metrics({"m": 1.0}, step=0)
        runs.append(t)

    thread = threading.Thread(target=track)
    thread.start()
    thread.join()
    assert runs[0].status == "FINISHED" and runs[0].server_run_id is not None
    assert not any(name in os.environ for name in tracking_store.HTTP_BUDGET)  # a background thread leaves the environment alone
    with Tracker("suite-env", "main", tracking_uri=server.uri):
        pass
    assert {name: os.environ[name] for name in tracking_store.HTTP_BUDGET} == tracking_store.HTTP_BUDGET
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")  # what the user set is kept
    with Tracker("suite-env", "main", tracking_uri=server.uri):
        pass
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"


def test_unreachable_server_keeps_the_run_in_the_outbox(_isolated, caplog):
    caplog.set_level(logging.WARNING, logger="core.tracking")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Tracker("suite-down", "parent", tracking_uri=uri) as parent:
        with Tracker("suite-down", "moco-s0", tracking_uri=uri, parent_run_id=parent.run_id, tags={"config_hash": "d1"}) as t:
            t.log_params({"method": {"name": "moco"}, "lr": 0.03})
            for step in range(50):
                t.log_metrics({"loss": 1.0 + step}, step=step)
            t.log_dict({"done": True}, "summary.json")
    assert uri in caplog.text and "is not on the tracking server" in caplog.text
    assert caplog.text.count("WARNING") == 2  # once per run, not at every flush
    assert t.server_run_id is None and t.tracking_uri == f"sqlite:///{_isolated / tracking_store.OUTBOX_DB}"
    assert not (_isolated / "mlflow.db").exists()

    client = _client(_isolated, tracking_store.OUTBOX_DB)
    run = client.get_run(t.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"method.name": "moco", "lr": "0.03"}
    assert run.data.tags[tracking_sync.SERVER_TAG] == uri and tracking_sync.SYNCED_TAG not in run.data.tags
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert client.get_run(parent.run_id).info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(t.run_id, "loss")) == list(range(50))
    assert (_isolated / tracking_store.OUTBOX_ARTIFACT_DIR / t.run_id / "artifacts" / "summary.json").exists()
    # a rerun while the server is still down finds the run in the outbox, and does not train it again
    assert find_finished_runs("suite-down", "config_hash", "d1", tracking_uri=uri) == [t.run_id]
    assert find_finished_runs("suite-down", "config_hash", "d1", tracking_uri=f"http://127.0.0.1:{free_port()}") == []


@pytest.mark.slow
def test_server_dying_mid_run_loses_nothing_and_sync_completes_the_server_run(_isolated, mlflow_server, caplog, capsys):
    from harness.cli import main

    caplog.set_level(logging.WARNING, logger="core.tracking")
    server = mlflow_server()
    weights = _isolated / "encoder.pt"
    weights.write_bytes(b"\x00weights" * 1000)
    parent = Tracker("suite-kill", "suite-invocation", tracking_uri=server.uri)
    t = Tracker(
        "suite-kill", "victim", tracking_uri=server.uri, parent_run_id=parent.run_id, tags={"config_hash": "k1"}, flush_seconds=600
    )
    t.log_params({"method": {"name": "moco"}, "seed": 3})
    for step in range(100):
        t.log_metrics({"loss": float(step), "lr": 0.1}, step=step)
    t.log_dict({"phase": "before"}, "before.json")
    t.flush()
    remote_id, remote_parent = t.server_run_id, parent.server_run_id
    assert len(MlflowClient(server.uri).get_metric_history(remote_id, "loss")) == 100  # really on the server

    server.kill()  # the server's copy: RUNNING with steps 0-99
    for step in range(100, 200):
        t.log_metrics({"loss": float(step), "lr": 0.1}, step=step)
    t.log_artifact(weights, artifact_path="model")
    t.finish()
    parent.finish()
    assert server.uri in caplog.text and t.status == "FINISHED"

    local = _client(_isolated, tracking_store.OUTBOX_DB)
    run = local.get_run(t.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[tracking_sync.SYNCED_TAG] == remote_id
    assert run.data.params == {"method.name": "moco", "seed": "3"} and run.data.tags["config_hash"] == "k1"
    for key in ("loss", "lr"):
        assert sorted(m.step for m in local.get_metric_history(t.run_id, key)) == list(range(200)), key
    art = _isolated / tracking_store.OUTBOX_ARTIFACT_DIR / t.run_id / "artifacts"
    assert (art / "before.json").exists() and (art / "model" / "encoder.pt").read_bytes() == weights.read_bytes()

    server = mlflow_server(again=server)
    assert main(["sync", "--tracking-uri", server.uri]) == 0
    assert "2 run(s) copied" in capsys.readouterr().out
    client = MlflowClient(server.uri)
    copy = client.get_run(remote_id)  # the server's own run, completed: not a second copy beside it
    assert copy.info.status == "FINISHED" and copy.data.params == {"method.name": "moco", "seed": "3"}
    for key in ("loss", "lr"):
        assert sorted(m.step for m in client.get_metric_history(remote_id, key)) == list(range(200)), key  # each step once
    assert copy.data.tags["mlflow.parentRunId"] == remote_parent and client.get_run(remote_parent).info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(remote_id)} == {"before.json", "model"}
    assert find_finished_runs("suite-kill", "config_hash", "k1", tracking_uri=server.uri) == [remote_id]  # a rerun skips it
    assert main(["sync", "--tracking-uri", server.uri]) == 0
    assert "0 run(s) copied" in capsys.readouterr().out
    assert len(client.search_runs([client.get_experiment_by_name("suite-kill").experiment_id])) == 2


@pytest.mark.slow
def test_a_child_copied_before_its_parent_takes_the_parent_along(_isolated, healthy_server):
    down = f"http://127.0.0.1:{free_port()}"  # the runs are kept in the outbox, then copied to the healthy server
    with Tracker("suite-late", "parent", tracking_uri=down) as parent:
        with Tracker("suite-late", "child", tracking_uri=down, parent_run_id=parent.run_id) as child:
            pass
    copied = tracking_sync.push_run(child.tracking_uri, child.run_id, healthy_server.uri)
    server = MlflowClient(healthy_server.uri)
    server_parent = server.get_run(copied).data.tags["mlflow.parentRunId"]
    assert server.get_run(server_parent).info.run_name == "parent"
    assert _client(_isolated, tracking_store.OUTBOX_DB).get_run(parent.run_id).data.tags[tracking_sync.SYNCED_TAG] == server_parent
