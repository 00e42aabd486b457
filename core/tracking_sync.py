"""Put runs that fell back to the local store while the tracking server was down back on the server.

When the server dies mid-suite, :class:`core.tracking.Tracker` moves the run (and its parent)
to ``mlflow-fallback.db`` with every point (see "Outages" in :mod:`core.tracking`), so nothing
is lost; but the server still holds the run as it was when the server died (RUNNING, with the
points sent until then), and a rerun of the suite, which looks for finished runs on the server,
would train everything again. :func:`sync_fallback` reconciles the two: each fallback run that
came from this server and was not synced yet is written to the server,

- into the server run it continues (tag ``vsbench.remote_run_id``), when there is one: the
  params, tags and metric points the server lacks are added, so the server's copy becomes the
  whole run, each (metric, step) once; otherwise into a new run of the same experiment and name;
- with its parent link mapped to the parent's server run, its artifacts and its final status;

and is then tagged ``vsbench.synced_to`` with the server run's id, so a second sync does nothing.
``vsbench run`` syncs before its first run whenever the server answers and the working folder
holds a fallback store; ``vsbench sync`` does it on demand.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from core.io import file_lock
from core.tracking import FALLBACK_DB, FALLBACK_TAG, PARENT_TAG, REMOTE_RUN_TAG, _client, _experiment_id, _probe

log = logging.getLogger(__name__)
SYNCED_TAG = "vsbench.synced_to"
_NOT_COPIED = (FALLBACK_TAG, REMOTE_RUN_TAG, SYNCED_TAG, PARENT_TAG)
SYNC_LOCK_TIMEOUT_S = 600.0


def pending_runs(fallback, server_uri: str) -> list:
    """Runs of the fallback store that came from ``server_uri`` and are not on it yet, parents first."""
    experiments = [e.experiment_id for e in fallback.search_experiments()]
    if not experiments:
        return []
    runs = [r for r in fallback.search_runs(experiments, f"tags.`{FALLBACK_TAG}` = '{server_uri}'", max_results=50_000)
            if SYNCED_TAG not in r.data.tags]
    ids = {r.info.run_id for r in runs}
    return sorted(runs, key=lambda r: (r.data.tags.get(PARENT_TAG) in ids, r.info.start_time or 0))


def sync_if_needed(tracking_uri: str | None) -> dict[str, str]:
    """Before a suite: sync the working folder's fallback store to the tracking server when both
    exist and the server answers (a server that is still down leaves the runs where they are)."""
    from core.tracking import _is_local, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if _is_local(uri) or not Path(FALLBACK_DB).exists():
        return {}
    try:
        return sync_fallback(uri)
    except ConnectionError as err:
        log.warning("%s", err)
        return {}


def sync_fallback(server_uri: str, *, fallback_db: str | Path = FALLBACK_DB) -> dict[str, str]:
    """Copy the runs ``fallback_db`` holds for ``server_uri`` to the server (see the module
    docstring); returns {fallback run id: server run id} of the runs copied now. Raises
    ``ConnectionError`` when the server does not answer."""
    fallback_db = Path(fallback_db)
    if not fallback_db.exists():
        return {}
    why = _probe(server_uri)
    if why:
        raise ConnectionError(f"tracking server {server_uri} does not answer ({why}); the runs stay in {fallback_db}")
    fallback_uri = f"sqlite:///{fallback_db.resolve()}"
    copied: dict[str, str] = {}
    with file_lock(fallback_db.with_name(fallback_db.name + ".sync.lock"), timeout=SYNC_LOCK_TIMEOUT_S):  # one sync at a time
        fallback, server = _client(fallback_uri), _client(server_uri)
        parents: dict[str, str] = {}  # fallback run id -> server run id, for parent links
        for run in pending_runs(fallback, server_uri):
            target = _copy_run(fallback, server, run, parents)
            parents[run.info.run_id] = copied[run.info.run_id] = target
            fallback.set_tag(run.info.run_id, SYNCED_TAG, target)
            log.info("copied run %r (%s) of the fallback store %s to %s as run %s", run.info.run_name, run.info.run_id, fallback_db,
                     server_uri, target)
    return copied


def _copy_run(fallback, server, run, parents: dict[str, str]) -> str:
    """Write ``run`` to the server (into the run it continues, or a new one); returns its server id."""
    from mlflow.entities import Metric, Param, RunTag

    tags = {k: v for k, v in run.data.tags.items() if k not in _NOT_COPIED}
    parent = run.data.tags.get(PARENT_TAG)
    if parent:
        tags[PARENT_TAG] = _server_parent(fallback, parent, parents)
    target = _server_run(fallback, server, run, tags)
    held = server.get_run(target).data
    params = [Param(k, v) for k, v in run.data.params.items() if k not in held.params]
    metrics = []
    for key in run.data.metrics:
        have = {m.step for m in server.get_metric_history(target, key)} if key in held.metrics else set()
        metrics += [Metric(m.key, m.value, m.timestamp, m.step) for m in fallback.get_metric_history(run.info.run_id, key)
                    if m.step not in have]
    server.log_batch(target, metrics=metrics, params=params, tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
    with tempfile.TemporaryDirectory() as tmp:
        if fallback.list_artifacts(run.info.run_id):
            server.log_artifacts(target, fallback.download_artifacts(run.info.run_id, "", tmp))
    server.set_terminated(target, run.info.status, end_time=run.info.end_time)
    return target


def _server_parent(fallback, parent: str, parents: dict[str, str]) -> str:
    """The server id of a run's parent: synced now or earlier, or a server run that never fell back."""
    from mlflow.exceptions import MlflowException

    if parent in parents:
        return parents[parent]
    try:
        return fallback.get_run(parent).data.tags.get(SYNCED_TAG) or parent
    except MlflowException:
        return parent  # not in the fallback store: the parent stayed on the server


def _server_run(fallback, server, run, tags: dict[str, str]) -> str:
    """The server run that ``run`` continues when the server holds it, else a new one."""
    from mlflow.exceptions import MlflowException

    remote = run.data.tags.get(REMOTE_RUN_TAG)
    if remote:
        try:
            return server.get_run(remote).info.run_id
        except MlflowException:
            log.warning("the server no longer holds run %s, which fallback run %s continues; copying it as a new run", remote,
                        run.info.run_id)
    experiment = fallback.get_experiment(run.info.experiment_id).name
    created = server.create_run(_experiment_id(server, experiment, None), start_time=run.info.start_time, tags=tags,
                                run_name=run.info.run_name)
    return created.info.run_id
