"""Copying runs of the outbox store to their tracking server, and of cluster jobs' stores to the main one.

A run tracked for a server is written to the outbox store of its working folder
(:mod:`core.tracking_store`) and tagged ``vsbench.server`` with the server's URI. :func:`push_run`
copies it to the server, as often as asked: the first copy creates the server run and records
its id on the local run (``vsbench.synced_to``); every copy adds the params, tags and metric
points the server lacks (each (metric, step) once) and the run's status; the copy of an ended run
adds its artifacts and marks the local run ``vsbench.synced = complete``. A child's parent link
names its parent's server run (the parent is copied first if it never was). The tracker pushes its
run when it starts, at every flush and when it ends; a server that is down then only delays the
copy: :func:`sync_outbox` copies every run not complete, before a suite starts
(:func:`sync_if_needed`) and on demand (``vsbench sync``). One copy at a time per outbox
(``<outbox>.sync.lock``), so two processes never create the same server run twice.

Cluster jobs without a server each write a sqlite store of their own (SQLite must not be written
from many nodes at once); :func:`merge_stores` copies their ended runs into the main store the same way.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from core.io import file_lock
from core.tracking_store import (OUTBOX_DB, absolute_sqlite, artifact_root, experiment_id, is_local, open_client, outbox_uri, probe, resolve_tracking_uri,
                                 sqlite_path)

log = logging.getLogger(__name__)
PARENT_TAG = "mlflow.parentRunId"
SERVER_TAG, SYNCED_TAG, COMPLETE_TAG = "vsbench.server", "vsbench.synced_to", "vsbench.synced"
_NOT_COPIED = (SERVER_TAG, SYNCED_TAG, COMPLETE_TAG, PARENT_TAG)
SYNC_LOCK_TIMEOUT_S = 600.0


def push_run(local_uri: str, run_id: str, server_uri: str) -> str:
    """Copy the run ``run_id`` of the store ``local_uri`` to the server (see the module docstring);
    returns its server run id. Raises ``ConnectionError`` when the server does not answer."""
    if why := probe(server_uri):
        raise ConnectionError(f"tracking server {server_uri} does not answer ({why})")
    with _sync_lock(local_uri):
        return _copy(open_client(local_uri), open_client(server_uri), run_id)


def sync_outbox(server_uri: str, *, outbox: str | Path = OUTBOX_DB) -> dict[str, str]:
    """Copy every run of ``outbox`` tracked for ``server_uri`` and not complete on it, parents first;
    returns {local run id: server run id} of the runs copied. Raises ``ConnectionError`` when the
    server does not answer."""
    outbox = Path(outbox)
    if not outbox.exists():
        return {}
    if why := probe(server_uri):
        raise ConnectionError(f"tracking server {server_uri} does not answer ({why}); the runs stay in {outbox}")
    return _copy_store(outbox, server_uri, f"tags.`{SERVER_TAG}` = '{server_uri}'")


def merge_stores(stores: list[Path], target_uri: str) -> dict[str, str]:
    """Copy the ended runs of other sqlite ``stores`` (a cluster job's own, which only that job
    wrote) into the store ``target_uri``, as :func:`sync_outbox` copies to a server: each run once,
    complete, its parent link kept; returns {store run id: target run id} of the runs copied now.
    A run still RUNNING is left for a later merge."""
    copied, target_uri = {}, absolute_sqlite(target_uri, Path.cwd())  # MLflow keeps one engine per URI text: never a relative one
    for store in stores:
        copied |= _copy_store(store, target_uri, "attributes.status != 'RUNNING'")
    return copied


def _copy_store(store: Path, target_uri: str, filter_string: str) -> dict[str, str]:
    """Copy the runs of ``store`` that match ``filter_string`` and are not complete, oldest first."""
    local_uri = f"sqlite:///{Path(store).resolve()}"
    with _sync_lock(local_uri):
        local, target = open_client(local_uri), open_client(target_uri)
        experiments = [e.experiment_id for e in local.search_experiments()]
        runs = local.search_runs(experiments, filter_string, max_results=50_000) if experiments else []
        pending = sorted((r for r in runs if COMPLETE_TAG not in r.data.tags), key=lambda r: r.info.start_time or 0)
        artifacts = artifact_root(target_uri)
        copied = {r.info.run_id: _copy(local, target, r.info.run_id, artifacts) for r in pending}
    for local_id, target_id in copied.items():
        log.info("copied run %s of %s to %s as run %s", local_id, store, target_uri, target_id)
    return copied


def sync_if_needed(tracking_uri: str | None) -> dict[str, str]:
    """Before a suite: copy the working folder's outbox to the tracking server when it answers, so
    runs that ended while it was down count as done (a server still down leaves them where they are)."""
    uri = resolve_tracking_uri(tracking_uri)
    outbox = sqlite_path(outbox_uri())
    if is_local(uri) or not outbox.exists():
        return {}
    try:
        return sync_outbox(uri, outbox=outbox)
    except ConnectionError as err:
        log.warning("%s", err)
        return {}


def _sync_lock(local_uri: str):
    db = Path(local_uri[len("sqlite:///"):])
    return file_lock(db.with_name(db.name + ".sync.lock"), timeout=SYNC_LOCK_TIMEOUT_S)


def _copy(local, server, run_id: str, artifacts: Path | None = None) -> str:
    """Write what the server lacks of the local run ``run_id``; returns its server run id."""
    from mlflow.entities import Metric, Param, RunTag

    run = local.get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if k not in _NOT_COPIED}
    if parent := run.data.tags.get(PARENT_TAG):
        tags[PARENT_TAG] = _server_parent(local, server, parent, artifacts)
    target = _server_run(local, server, run, tags, artifacts)
    held = server.get_run(target).data
    params = [Param(k, v) for k, v in run.data.params.items() if k not in held.params]
    metrics = []
    for key in run.data.metrics:
        have = {m.step for m in server.get_metric_history(target, key)} if key in held.metrics else set()
        metrics += [Metric(m.key, m.value, m.timestamp, m.step) for m in local.get_metric_history(run_id, key) if m.step not in have]
    server.log_batch(target, metrics=metrics, params=params, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
    if run.info.status == "RUNNING":
        server.update_run(target, status="RUNNING")
        return target
    with tempfile.TemporaryDirectory() as tmp:
        if local.list_artifacts(run_id):
            server.log_artifacts(target, local.download_artifacts(run_id, "", tmp))
    server.set_terminated(target, run.info.status, end_time=run.info.end_time)
    local.set_tag(run_id, COMPLETE_TAG, "complete")
    return target


def _server_parent(local, server, parent: str, artifacts: Path | None) -> str:
    """The server id of a run's parent, copying the parent first if it never was."""
    from mlflow.exceptions import MlflowException

    try:
        held = local.get_run(parent).data.tags
    except MlflowException:
        return parent  # not in the outbox: a server run already
    return held.get(SYNCED_TAG) or _copy(local, server, parent, artifacts)


def _server_run(local, server, run, tags: dict[str, str], artifacts: Path | None) -> str:
    """The server run that ``run`` was copied to before, else a new one (recorded on the local run)."""
    from mlflow.exceptions import MlflowException

    if earlier := run.data.tags.get(SYNCED_TAG):
        try:
            return server.get_run(earlier).info.run_id
        except MlflowException:
            log.warning("the server no longer holds run %s, where run %s was copied; copying it as a new run", earlier, run.info.run_id)
    experiment = local.get_experiment(run.info.experiment_id).name
    created = server.create_run(experiment_id(server, experiment, artifacts), start_time=run.info.start_time, tags=tags,
                                run_name=run.info.run_name)
    local.set_tag(run.info.run_id, SYNCED_TAG, created.info.run_id)
    return created.info.run_id

