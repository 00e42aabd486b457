"""Which MLflow store a URI names, and opening one safely.

- ``sqlite:///mlflow.db`` (artifacts in ``./mlartifacts``) unless an explicit URI or
  ``MLFLOW_TRACKING_URI`` names another (explicit > environment > default). Relative sqlite paths
  are made absolute when a tracker starts, so a later ``chdir`` keeps the store.
- A run tracked for a server is written to the working folder's outbox store first
  (``mlflow-outbox.db``, artifacts in ``mlartifacts-outbox``; a cluster job's own folder instead,
  ``$VSBENCH_OUTBOX_DIR``) and copied to the server from there (:mod:`core.tracking_sync`), so a
  server that is down loses nothing.
- A new sqlite store is created and migrated by MLflow on first open; two processes doing that at
  once break it, so a sqlite store is opened under an ``flock`` on ``<db>.lock``.
- A server gets a ``GET /health`` probe before use and a short HTTP retry budget
  (:data:`HTTP_BUDGET`), written to the environment by the main thread only and only where unset.
- Experiments are tagged ``mlflow.experimentKind = custom_model_development``: MLflow 3's UI then
  opens their runs instead of its GenAI view.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from core.io import LockTimeout, file_lock

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
OUTBOX_DB = "mlflow-outbox.db"
ARTIFACT_DIR, OUTBOX_ARTIFACT_DIR = "mlartifacts", "mlartifacts-outbox"
STORE_LOCK_TIMEOUT_S = 120.0  # how long opening a sqlite store waits for a process creating or migrating it
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
PROBE_TIMEOUT_S = 2.5
#: MLflow's default (7 retries, 120 s timeouts) would stall a run for minutes whenever the server is down.
HTTP_BUDGET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """The tracking URI to use: ``explicit`` > ``MLFLOW_TRACKING_URI`` > :data:`DEFAULT_URI`."""
    for candidate in (explicit, os.environ.get("MLFLOW_TRACKING_URI")):
        if candidate and candidate.strip():
            return candidate.strip()
    return DEFAULT_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths as given), else None."""
    path = uri[len("sqlite:///"):].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


def absolute_sqlite(uri: str, cwd: Path) -> str:
    """``uri`` with a relative sqlite path made absolute against ``cwd``."""
    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    return f"sqlite:///{(cwd / path).resolve()}" + (uri[uri.index("?"):] if "?" in uri else "")


def is_local(uri: str) -> bool:
    """Whether ``uri`` is a store on this machine (sqlite file, file store, plain or Windows path)."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file", "sqlite") or len(scheme) == 1


OUTBOX_DIR_VARIABLE = "VSBENCH_OUTBOX_DIR"  # set by a cluster job: an outbox of its own, not one shared by many nodes


def outbox_uri(folder: Path | None = None) -> str:
    """The outbox store of runs tracked for a server: in ``folder``, else in ``$VSBENCH_OUTBOX_DIR``
    (a cluster job's own folder), else in the working folder."""
    folder = folder or Path(os.environ.get(OUTBOX_DIR_VARIABLE) or ".")
    return f"sqlite:///{folder.resolve() / OUTBOX_DB}"


def artifact_root(uri: str) -> Path | None:
    """Where a sqlite store keeps artifacts: ``mlartifacts`` (``mlartifacts-outbox``) beside the database."""
    path = sqlite_path(uri)
    return None if path is None else path.parent / (OUTBOX_ARTIFACT_DIR if path.name == OUTBOX_DB else ARTIFACT_DIR)


def probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the server at ``uri`` answers ``GET /health`` (any status below 500) or is no server, else why not."""
    if urlparse(uri).scheme not in ("http", "https"):
        return None
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError as e:
        return None if e.code < 500 else f"GET {url} answered HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return f"GET {url} failed: {getattr(e, 'reason', None) or e}"


def open_client(uri: str):
    """An ``MlflowClient`` of the store at ``uri``: a sqlite store opened (created or migrated when new)
    under ``<db>.lock``; for a server, :data:`HTTP_BUDGET` where unset (by the main thread only)."""
    from mlflow.tracking import MlflowClient

    if not is_local(uri) and threading.current_thread() is threading.main_thread():
        for name, value in HTTP_BUDGET.items():
            os.environ.setdefault(name, value)
    db = sqlite_path(uri)
    if db is None or (db.parent.is_dir() and not os.access(db.parent, os.W_OK)):  # nothing can be created there
        return MlflowClient(tracking_uri=uri)
    try:
        with file_lock(db.with_name(db.name + ".lock"), timeout=STORE_LOCK_TIMEOUT_S):
            if not db.exists() or db.stat().st_size == 0:
                _copy_empty_store(db)
            return MlflowClient(tracking_uri=uri)
    except LockTimeout as err:
        raise LockTimeout(f"cannot open the MLflow store {uri}: {err}; that process is creating or migrating the store: let it "
                          "finish (or end it, if it hangs), then try again") from None


def _copy_empty_store(db: Path) -> None:
    """Make the new sqlite store ``db`` as a copy of an empty one MLflow created and migrated once
    (per MLflow version, under ``~/.cache/vsbench/``): creating and migrating a store costs 1-2 s, a
    copy milliseconds, and every cluster job and test makes stores of its own. The copy's Default
    experiment is pointed where MLflow would have put it (``./mlruns/0``). Any failure leaves the
    store for MLflow to create."""
    import shutil
    import sqlite3

    import mlflow

    from core.io import atomic_write

    template = Path.home() / ".cache" / "vsbench" / f"mlflow-{mlflow.__version__}-empty.db"
    try:
        if not template.exists():
            _make_template(template)
        db.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(db) as out, open(template, "rb") as source:
            shutil.copyfileobj(source, out)
        with contextlib.closing(sqlite3.connect(db)) as con, con:
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(Path.cwd().resolve() / "mlruns" / "0"),))
    except (OSError, sqlite3.Error) as err:
        log.debug("no template copy for %s (%s); MLflow creates it", db, err)
        db.unlink(missing_ok=True)


def _make_template(template: Path) -> None:
    """The empty store MLflow makes, written once under a lock (a finished file, never a half-made one)."""
    from mlflow.tracking import MlflowClient

    template.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(template.with_name(template.name + ".lock"), timeout=STORE_LOCK_TIMEOUT_S):
        if template.exists():
            return
        partial = template.with_name(f".{template.name}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)
        MlflowClient(tracking_uri=f"sqlite:///{partial}").search_experiments()
        os.replace(partial, template)


def experiment_id(client, name: str, artifacts: Path | None) -> str:
    """Get, create or restore the experiment ``name``, tagged as model training (:data:`EXPERIMENT_KIND`)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            location = artifacts.resolve().as_uri() if artifacts is not None else None
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except MlflowException:  # created by another process meanwhile
            if (exp := client.get_experiment_by_name(name)) is None:
                raise
    if exp.lifecycle_stage == "deleted":
        log.warning("MLflow experiment %r (id %s) was deleted; restoring it", name, exp.experiment_id)
        client.restore_experiment(exp.experiment_id)
    for key, value in EXPERIMENT_KIND.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id
