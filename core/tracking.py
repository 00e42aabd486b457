"""MLflow tracking for the harness: one :class:`Tracker` per MLflow run.

Store layout
    By default runs go to an embedded store in the working directory: ``sqlite:///mlflow.db``
    for runs, params, metrics and tags, and ``./mlartifacts`` for artifacts (the experiment's
    artifact location is set to that folder's absolute ``file://`` URI when the experiment is
    created, so artifacts never land in whatever ``./mlruns`` the current directory has). A
    relative sqlite path is made absolute when the tracker starts, so a later ``chdir`` does not
    split a run between two databases. ``MLFLOW_TRACKING_URI``, or an explicit ``tracking_uri``
    (the CLI's ``--tracking-uri``), points at a tracking server instead; precedence is explicit >
    environment > default (:func:`resolve_tracking_uri`).

    Opening a sqlite store holds an ``flock`` on ``<db>.lock`` beside the database
    (:func:`core.io.file_lock`): MLflow creates and migrates the tables of a new database when
    it first opens it, and two processes doing that at once (two suites started together in a
    fresh folder) both fail and leave the database broken. A process waits for the other up to
    :data:`STORE_LOCK_TIMEOUT_S`, then fails naming the store and the process holding it.

    One experiment per suite; a parent run per suite invocation; a child run per (method,
    backbone, seed), linked to its parent with MLflow's ``mlflow.parentRunId`` tag. Params are
    the flattened configs (``{"a.b.c": "value"}``, see :func:`flatten_config`); tags carry the
    vsbench version, the git commit, torch/CUDA versions and the device (:func:`runtime_tags`)
    plus what the caller adds (dataset fingerprint, protocol hashes, config hash).

Client API, no fluent state
    Everything goes through ``MlflowClient`` with explicit run ids, never ``mlflow.start_run``:
    a parent and its children are open at the same time, and nothing one tracker does can
    leak into another run through MLflow's global "active run".

Buffering
    A tracking call costs milliseconds (a SQL transaction, or an HTTP round trip) and the
    training loop must not wait on it. :meth:`Tracker.log_metrics` only appends ``(key, value,
    timestamp, step)`` to an in-memory buffer; a background thread sends the buffer with
    ``MlflowClient.log_batch`` (1000 values per request) when it holds ``flush_every`` values or
    ``flush_seconds`` have passed, and :meth:`~Tracker.flush` / :meth:`~Tracker.finish` send
    the rest synchronously. Timestamps are taken when a value is logged, not when it is sent.
    Params, tags and artifacts are rare and are sent at once (in the calling thread).

    NaN and infinite metric values are logged as they are: a diverging loss should be visible in
    the history rather than silently dropped. (MLflow keeps NaN; its SQL stores clamp +-inf to
    +-1.8e308.) Values are converted with ``float()``, which synchronises the device when given
    a CUDA tensor: log Python floats taken at the logging interval.

Rank 0 only
    Under DDP every rank runs the same loop, but only rank 0 may log, or each run would exist
    once per rank. ``enabled=None`` (the default) means "enabled on rank 0": the rank comes from
    an initialised ``torch.distributed`` process group, else from torchrun's ``RANK`` variable.
    A disabled tracker (``enabled=False``, or rank != 0) imports nothing, opens nothing, starts
    no thread, and every method returns at once.

Fallback when the server is unreachable
    Losing a training run because the tracking server blinked is not acceptable, and neither
    is training waiting minutes on MLflow's default HTTP retry budget (7 retries with backoff,
    120 s timeouts). So, for a remote store:

    - at start, a quick ``GET <uri>/health`` (urllib, 2.5 s timeout) tells whether the server
      answers before any MLflow call is made;
    - every MLflow HTTP call of a tracker runs with a short budget (2 retries, 5 s timeout;
      the ``MLFLOW_HTTP_REQUEST_*`` variables, only where the user has not set them, and only
      for the duration of the call);
    - if the server does not answer, at start or mid-run, a warning names its URI and the run is
      written to a LOCAL fallback store instead: ``sqlite:///mlflow-fallback.db`` in the working
      directory, artifacts in ``./mlartifacts-fallback``. Everything already logged for the run
      (tags, params, every metric value, artifacts) is replayed there, so the local copy is
      complete; the tracker then stays on the fallback store. The local run carries the tags
      ``vsbench.fallback_from`` (the server URI) and ``vsbench.remote_run_id`` (the run it
      continues, if one was opened on the server). To replay, a tracker on a remote store keeps
      a journal: params and tags, every metric value (packed arrays, 24 bytes per value) and the
      paths of logged artifacts (files are re-read at replay time, so do not delete them while
      the run is open);
    - a family stays together: a child whose parent (in this process) has fallen back logs to
      the fallback store too, and a child that falls back moves its live parent along, so that
      ``mlflow.parentRunId`` always names a run in the same store.

    Errors of a local store (disk full, a locked database) and values MLflow refuses are logged
    as warnings and the affected call is dropped: tracking never stops training. Exceptions are
    raised only for programming errors (an unknown status passed to :meth:`Tracker.finish`).

Continuing an interrupted run
    A killed and resumed training run is one logical run, so it is one MLflow run:
    ``continue_run_id`` names the run an earlier segment logged to, and the tracker reopens it
    (status RUNNING again, this segment's tags, the ``vsbench.error`` tag of a failed segment
    removed) instead of creating one. A run that is not in the store's experiment (another store,
    or deleted) cannot be continued: a new run is created with a warning. A FINISHED run is never
    reopened (a finished run trained again, or evaluated again with other protocols, is a new run).
    The resumed segment recomputes the steps between its checkpoint and the crash, and MLflow
    keeps every value logged, so a continued run drops the values of a metric at steps it already
    holds for that metric: each step keeps one value, the first.

Finishing
    :meth:`Tracker.finish` marks the run FINISHED, FAILED or KILLED after a last flush. As a
    context manager a tracker finishes FINISHED on a normal exit, FAILED on an exception (whose
    type and message go into the ``vsbench.error`` tag) and KILLED on ``KeyboardInterrupt``; the
    exception is re-raised. Trackers still open when the interpreter exits are flushed and
    marked KILLED by an ``atexit`` hook.

Reading runs back
    :func:`find_finished_runs` lists the finished runs of an experiment with a given tag value
    (a suite skips configurations whose ``config_hash`` already has one); :func:`runs_frame`
    returns the runs of an experiment, or the children of a parent run, as a pandas DataFrame
    with ``params.*``, ``metrics.*`` (last value) and ``tags.*`` columns, for report tables.
"""

from __future__ import annotations

import atexit
import dataclasses
import getpass
import hashlib
import json
import logging
import os
import platform
import posixpath
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from array import array
from collections.abc import Callable, Mapping
from contextlib import contextmanager, nullcontext
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from core.io import LockTimeout, file_lock

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
FALLBACK_DB = "mlflow-fallback.db"
FALLBACK_URI = f"sqlite:///{FALLBACK_DB}"  # relative to the working directory when a tracker starts
ARTIFACT_DIR = "mlartifacts"
FALLBACK_ARTIFACT_DIR = "mlartifacts-fallback"
STATUSES = ("FINISHED", "FAILED", "KILLED")
#: How long opening a sqlite store waits for another process creating or migrating it.
STORE_LOCK_TIMEOUT_S = 120.0

#: Tags the tracker writes itself (besides :func:`runtime_tags` and MLflow's own).
PARENT_TAG = "mlflow.parentRunId"
FALLBACK_TAG = "vsbench.fallback_from"
REMOTE_RUN_TAG = "vsbench.remote_run_id"
TRUNCATED_TAG = "vsbench.truncated_params"
ERROR_TAG = "vsbench.error"

# MLflow's limits (mlflow.utils.validation): longer param/tag values are refused or cut.
MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
_METRICS_PER_REQUEST = 1000

PROBE_TIMEOUT_S = 2.5
#: The HTTP retry budget of a tracker's MLflow calls (applied where the user has not set these).
HTTP_BUDGET = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


# --------------------------------------------------------------------------------------------
# URIs and stores


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """The tracking URI to use: ``explicit`` > ``MLFLOW_TRACKING_URI`` > :data:`DEFAULT_URI`."""
    for candidate in (explicit, os.environ.get("MLFLOW_TRACKING_URI")):
        if candidate and candidate.strip():
            return candidate.strip()
    return DEFAULT_URI


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths as given), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _absolute_sqlite(uri: str, cwd: Path) -> str:
    """``uri`` with a relative sqlite database path made absolute against ``cwd``."""
    path = _sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    query = uri.split("?", 1)[1] if "?" in uri else None
    absolute = f"sqlite:///{(cwd / path).resolve()}"
    return f"{absolute}?{query}" if query else absolute


def _is_local(uri: str) -> bool:
    """Whether ``uri`` is a store on this machine (sqlite file, file store or plain path)."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file", "sqlite") or len(scheme) == 1  # a Windows drive letter


def _artifact_root(uri: str) -> Path | None:
    """Where a sqlite store keeps artifacts: ``mlartifacts`` (or ``mlartifacts-fallback``) beside the db."""
    path = _sqlite_path(uri)
    if path is None:
        return None
    return path.parent / (FALLBACK_ARTIFACT_DIR if path.name == FALLBACK_DB else ARTIFACT_DIR)


def _probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the server at ``uri`` answers ``GET /health`` (any status below 500), else why not."""
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


_env_lock = threading.Lock()
_env_depth = 0
_env_set: list[str] = []


@contextmanager
def _http_budget():
    """Set :data:`HTTP_BUDGET` (where unset) while any tracker's MLflow call is in flight."""
    global _env_depth
    with _env_lock:
        if _env_depth == 0:
            _env_set.clear()
            for name, value in HTTP_BUDGET.items():
                if name not in os.environ:
                    os.environ[name] = value
                    _env_set.append(name)
        _env_depth += 1
    try:
        yield
    finally:
        with _env_lock:
            _env_depth -= 1
            if _env_depth == 0:
                for name in _env_set:
                    os.environ.pop(name, None)
                _env_set.clear()


def _store_lock(uri: str):
    """The lock a process holds while MLflow opens the store at ``uri``: the ``<db>.lock`` file of
    a sqlite store (nothing for a server, or a folder this process cannot write, where nothing
    can be created or migrated)."""
    db = _sqlite_path(uri)
    if db is None or (db.parent.is_dir() and not os.access(db.parent, os.W_OK)):
        return nullcontext()
    return file_lock(db.with_name(db.name + ".lock"), timeout=STORE_LOCK_TIMEOUT_S)


def _client(uri: str):
    """A client of the store at ``uri``, opened (created or migrated when new) under :func:`_store_lock`."""
    from mlflow.tracking import MlflowClient

    try:
        with _store_lock(uri):
            return MlflowClient(tracking_uri=uri)
    except LockTimeout as err:
        raise LockTimeout(f"cannot open the MLflow store {uri}: {err}; that process is creating or migrating the store: let it "
                          "finish (or end it, if it hangs), then try again") from None


# MLflow 3's UI opens an experiment in its GenAI (traces) view unless this tag says model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _experiment_id(client, name: str, artifact_root: Path | None) -> str:
    """Get or create the experiment ``name`` (restoring it if it was deleted), tagged as model
    training so that ``mlflow ui`` opens on its runs."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = artifact_root.resolve().as_uri() if artifact_root is not None else None
        try:
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)
        except MlflowException as e:  # created by another process meanwhile
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise e
    if exp.lifecycle_stage == "deleted":
        log.warning("MLflow experiment %r (id %s) was deleted; restoring it", name, exp.experiment_id)
        client.restore_experiment(exp.experiment_id)
    for key, value in EXPERIMENT_KIND.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


# --------------------------------------------------------------------------------------------
# Params, keys and runtime tags


def _param_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else list(value)
        try:
            return json.dumps(items, default=str)
        except (TypeError, ValueError):
            return str(items)
    return str(value)


def flatten_config(config: Mapping, prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings (and dataclasses) to ``{"a.b.c": "value"}`` with string values.

    Lists, tuples and sets become JSON strings (``[1, 2]``), an empty mapping becomes ``"{}"``
    (so the key is still recorded), everything else ``str(value)``. Values are not truncated
    here; :meth:`Tracker.log_params` does that.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
        if isinstance(v, Mapping):
            if v:
                out.update(flatten_config(v, key))
            else:
                out[key] = "{}"
        else:
            out[key] = _param_str(v)
    return out


_BAD_KEY_CHARS = re.compile(r"[^\w./\- ]")


def _safe_key(key: Any) -> str:
    """A key MLflow accepts: allowed characters only, not path-like, at most 250 characters."""
    original = str(key)
    k = _BAD_KEY_CHARS.sub("_", original)
    if k in ("", ".") or k.startswith(("/", "..")) or posixpath.normpath(k) != k:
        k = "_" + k.replace("/", "_")
    if len(k) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(original.encode()).hexdigest()[:8]
        k = f"{k[: MAX_KEY_LENGTH - 9]}-{digest}"
    return k


def _truncate(value: str, limit: int) -> tuple[str, bool]:
    """``value`` cut to ``limit`` characters with a marker saying so, and whether it was cut."""
    if len(value) <= limit:
        return value, False
    marker = f"...[truncated from {len(value)} chars]"
    return value[: limit - len(marker)] + marker, True


def _clean_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    out = {}
    for k, v in (tags or {}).items():
        value, cut = _truncate(str(v), MAX_TAG_LENGTH)
        if cut:
            log.warning("tag %r is longer than MLflow's %d characters; truncated", k, MAX_TAG_LENGTH)
        out[_safe_key(k)] = value
    return out


@lru_cache(maxsize=1)
def git_commit() -> str:
    """Short SHA of the vsbench checkout, with ``-dirty`` for uncommitted changes, else ``unknown``.

    ``VSBENCH_GIT_COMMIT`` overrides it (for installs without ``.git``). Untracked files do not
    count as changes; if ``git status`` itself fails, the tree is reported dirty.
    """
    if os.environ.get("VSBENCH_GIT_COMMIT"):
        return os.environ["VSBENCH_GIT_COMMIT"]
    root = str(Path(__file__).resolve().parents[1])
    try:
        sha = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        if sha.returncode != 0 or not sha.stdout.strip():
            return "unknown"
        status = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = status.returncode != 0 or bool(status.stdout.strip())
    return sha.stdout.strip() + ("-dirty" if dirty else "")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def runtime_tags(device: Any = None) -> dict[str, str]:
    """Tags describing where a run ran: vsbench version, git commit, torch, CUDA, device, host.

    ``device`` (a ``torch.device`` or string) names the training device; by default the current
    CUDA device when there is one, else the CPU.
    """
    import torch

    from core import __version__

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if dev.type == "cuda":
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            name = torch.cuda.get_device_name(index)
        elif dev.type == "cpu":
            name = f"cpu ({_cpu_name()})"
        else:
            name = str(dev)
    except Exception as e:  # a device we cannot query must not stop a run
        name = f"{dev} (unknown: {type(e).__name__})"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "vsbench.version": __version__,
        "git.commit": git_commit(),
        "torch.version": torch.__version__,
        "cuda.version": torch.version.cuda or "none",
        "cudnn.version": str(cudnn) if cudnn else "none",
        "device": name,
        "python.version": platform.python_version(),
        "host": socket.gethostname(),
    }


def _is_rank_zero() -> bool:
    """Rank 0 of an initialised process group, else of torchrun's ``RANK`` (True without either)."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to ask
    if dist is not None:
        try:
            if dist.is_available() and dist.is_initialized():
                return dist.get_rank() == 0
        except Exception:
            pass
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


# --------------------------------------------------------------------------------------------
# The tracker

# Trackers open in this process, by every run id they have had (weakly), and runs that moved to
# the fallback store: original run id -> local run id (a local id maps to itself).
_live: weakref.WeakValueDictionary[str, Tracker] = weakref.WeakValueDictionary()
_fallback_ids: dict[str, str] = {}
_registry_lock = threading.Lock()


def _is_outage(exc: BaseException) -> bool:
    """Whether a failed call to a remote store means "move to the fallback store".

    Anything but a refused value: connection errors, timeouts, 5xx answers, and also an
    unexpected 4xx (auth, a run deleted under us), since the data would be lost otherwise.
    """
    return getattr(exc, "error_code", None) != "INVALID_PARAMETER_VALUE"


class Tracker:
    """One MLflow run: params, tags, buffered metrics, artifacts; rank 0 only; local fallback.

    See the module docstring for the store layout, the buffering, the fallback behaviour and
    ``continue_run_id`` (continuing the run of an interrupted segment). Attributes: ``run_id``
    and ``experiment_id`` (None when disabled), ``tracking_uri`` (the store in use: the fallback
    store after a failure), ``requested_uri`` (the store asked for), ``fell_back`` and ``status``
    (the final status once finished).
    """

    def __init__(
        self,
        experiment: str,
        run_name: str,
        *,
        tracking_uri: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        enabled: bool | None = None,
        flush_every: int = 200,
        flush_seconds: float = 5.0,
        continue_run_id: str | None = None,
    ) -> None:
        self.experiment = experiment
        self.run_name = run_name
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.requested_uri = self.tracking_uri
        self.fell_back = False
        self.status: str | None = None
        self.enabled = _is_rank_zero() if enabled is None else bool(enabled)
        self._active = False  # accepting data (enabled, open and not finished)
        if not self.enabled:
            return

        cwd = Path.cwd()
        self.tracking_uri = self.requested_uri = _absolute_sqlite(self.tracking_uri, cwd)
        self._fallback_uri = f"sqlite:///{cwd.resolve() / FALLBACK_DB}"
        self._remote = not _is_local(self.tracking_uri)
        self._journal = self._remote  # keep what is needed to replay the run elsewhere
        self._flush_every = max(1, int(flush_every))
        self._flush_seconds = max(0.01, float(flush_seconds))
        self._pid = os.getpid()
        self._lock = threading.RLock()  # MLflow calls and store switches
        self._buf_lock = threading.Lock()  # the metric buffer
        self._buffer: list[tuple[str, float, int, int]] = []
        self._metric_journal: dict[str, tuple[array, array, array]] = {}
        self._artifact_journal: list[tuple[str, str, str | None]] = []
        self._params: dict[str, str] = {}
        self._truncated: set[str] = set()
        self._keys: dict[Any, str] = {}
        self._bad_keys: set[str] = set()
        self._continue_id = continue_run_id
        self._logged_through: dict[str, int] = {}  # a continued run: metric key -> last step it holds
        self._client = None
        self._start_ms = int(time.time() * 1000)
        try:
            self._tags = runtime_tags()
        except Exception as e:  # describing the machine must not stop a run
            log.warning("could not collect runtime tags: %s: %s", type(e).__name__, e)
            self._tags = {"vsbench.runtime_tags_error": f"{type(e).__name__}: {e}"}
        try:
            self._tags["mlflow.user"] = getpass.getuser()
        except Exception:
            pass
        self._tags.update(_clean_tags(tags))
        if parent_run_id:
            self._tags[PARENT_TAG] = parent_run_id

        self._open()
        if self._client is None:
            return
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flush_loop, name=f"vsbench-tracking-{run_name}", daemon=True)
        with _registry_lock:
            _live[self.run_id] = self
        self._active = True
        self._thread.start()

    # -- opening and falling back ------------------------------------------------------------

    def _open(self) -> None:
        if self._remote:
            if self.parent_run_id and self.parent_run_id in _fallback_ids:
                self._start_fallback(f"its parent run {self.parent_run_id} already logs to the fallback store", quiet=True)
                return
            why = _probe(self.tracking_uri)
            if why is not None:
                self._start_fallback(why)
                return
        try:
            client = _client(self.tracking_uri)
            with _http_budget() if self._remote else nullcontext():
                exp_id = _experiment_id(client, self.experiment, _artifact_root(self.tracking_uri))
                run = self._reopen(client, exp_id) if self._continue_id else None
                if run is None:
                    run = client.create_run(exp_id, start_time=self._start_ms, tags=self._tags, run_name=self.run_name)
        except Exception as e:
            if self._remote and _is_outage(e):
                self._start_fallback(f"{type(e).__name__}: {e}")
            else:
                log.warning(
                    "could not open MLflow run %r of experiment %r in %s (%s: %s); tracking is off for this run",
                    self.run_name, self.experiment, self.tracking_uri, type(e).__name__, e,
                )
            return
        self._client, self.experiment_id, self.run_id = client, exp_id, run.info.run_id

    def _reopen(self, client, exp_id: str):
        """The run ``continue_run_id`` set RUNNING again with this segment's tags, or None when it
        cannot be continued (see "Continuing an interrupted run" in the module docstring)."""
        from mlflow.entities import RunTag
        from mlflow.exceptions import MlflowException

        run_id = self._continue_id
        try:
            run = client.get_run(run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run = None
        if run is None or run.info.experiment_id != exp_id or run.info.lifecycle_stage != "active":
            log.warning("MLflow run %s, where %r was tracked before, is not a run of experiment %r in %s; tracking %r as a new run",
                        run_id, self.run_name, self.experiment, self.tracking_uri, self.run_name)
            return None
        if run.info.status == "FINISHED":
            log.info("MLflow run %s of %r finished before; tracking this one as a new run", run_id, self.run_name)
            return None
        client.update_run(run_id, status="RUNNING")
        if ERROR_TAG in run.data.tags:  # the error of the failed segment is not this run's outcome
            client.delete_tag(run_id, ERROR_TAG)
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in self._tags.items()], synchronous=True)
        self._params.update(run.data.params)
        self._logged_through = {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}
        log.info("continuing MLflow run %s of %r (it was %s)", run_id, self.run_name, run.info.status)
        return run

    def _start_fallback(self, reason: str, quiet: bool = False) -> None:
        """Move the run to the local fallback store and replay everything journaled (lock held)."""
        remote_run_id = self.run_id
        artifacts = _artifact_root(self._fallback_uri)
        (log.info if quiet else log.warning)(
            "MLflow tracking server %s is unreachable (%s); logging run %r of experiment %r to the local "
            "fallback store %s (artifacts in %s)",
            self.requested_uri, reason, self.run_name, self.experiment, self._fallback_uri, artifacts,
        )
        tags = dict(self._tags)
        tags[FALLBACK_TAG] = self.requested_uri
        if remote_run_id:
            tags[REMOTE_RUN_TAG] = remote_run_id
        if self.parent_run_id:
            tags[PARENT_TAG] = self._local_parent_id()
        try:
            client = _client(self._fallback_uri)
            exp_id = _experiment_id(client, self.experiment, artifacts)
            run = client.create_run(exp_id, start_time=self._start_ms, tags=tags, run_name=self.run_name)
        except Exception as e:
            log.warning(
                "could not open run %r in the fallback store %s either (%s: %s); tracking is off for this run",
                self.run_name, self._fallback_uri, type(e).__name__, e,
            )
            self._client = None  # calls become no-ops; finish() still stops the flush thread
            self._journal = False
            self._metric_journal, self._artifact_journal = {}, []
            return
        self._client, self.experiment_id, self.run_id = client, exp_id, run.info.run_id
        self.tracking_uri = self._fallback_uri
        self._remote = False
        self.fell_back = True
        with _registry_lock:
            _fallback_ids[self.run_id] = self.run_id
            _live[self.run_id] = self
            if remote_run_id:
                _fallback_ids[remote_run_id] = self.run_id
        self._replay()
        self._journal = False
        self._metric_journal = {}
        self._artifact_journal = []

    def _local_parent_id(self) -> str:
        """The parent's run id in the fallback store, moving a live parent there if needed."""
        parent_id = self.parent_run_id
        if parent_id not in _fallback_ids:
            parent = _live.get(parent_id)
            if parent is not None and parent is not self and parent._active and not parent.fell_back:
                parent._switch_to_fallback(f"its child run {self.run_name!r} lost the server")
        return _fallback_ids.get(parent_id, parent_id)

    def _switch_to_fallback(self, reason: str) -> None:
        with self._lock:
            if self._remote and not self.fell_back and self._client is not None:
                self._start_fallback(reason)

    def _replay(self) -> None:
        """Send the journal (params, metrics, artifacts) to the current store; tags went with the run."""
        from mlflow.entities import Metric, Param

        def attempt(what: str, fn: Callable[[], Any]) -> None:
            try:
                fn()
            except Exception as e:
                log.warning("replaying %s of run %r to %s failed: %s", what, self.run_name, self.tracking_uri, e)

        client, run_id = self._client, self.run_id
        if self._params:
            params = [Param(k, v) for k, v in self._params.items()]
            attempt("params", lambda: client.log_batch(run_id, params=params, synchronous=True))
        for key, (values, stamps, steps) in self._metric_journal.items():
            for i in range(0, len(values), _METRICS_PER_REQUEST):
                chunk = [
                    Metric(key, values[j], stamps[j], steps[j]) for j in range(i, min(i + _METRICS_PER_REQUEST, len(values)))
                ]
                attempt(f"metric {key!r}", lambda chunk=chunk: client.log_batch(run_id, metrics=chunk, synchronous=True))
        for entry in self._artifact_journal:
            attempt(f"artifact {entry[1] if entry[0] != 'text' else entry[2]!r}", lambda e=entry: _put_artifact(client, run_id, e))

    def _call(self, what: str, fn: Callable[[Any, str], Any], *, journaled: bool = True) -> None:
        """Run ``fn(client, run_id)`` on the current store; fall back or warn when it fails.

        ``journaled``: the data is in the journal, so a fallback's replay already covers it;
        otherwise the call is repeated on the fallback store.
        """
        with self._lock:
            if self._client is None:
                return
            try:
                if self._remote:
                    with _http_budget():
                        fn(self._client, self.run_id)
                else:
                    fn(self._client, self.run_id)
                return
            except Exception as e:
                if not (self._remote and _is_outage(e)):
                    log.warning("MLflow: %s for run %r in %s failed: %s", what, self.run_name, self.tracking_uri, e)
                    return
                self._start_fallback(f"{what} failed: {type(e).__name__}: {e}")
            if not journaled and self._client is not None:
                try:
                    fn(self._client, self.run_id)
                except Exception as e:
                    log.warning("MLflow: %s for run %r in %s failed: %s", what, self.run_name, self.tracking_uri, e)

    # -- logging -------------------------------------------------------------------------------

    def _key(self, key: Any, kind: str) -> str:
        safe = _safe_key(key)
        if safe != key:
            log.warning("%s name %r is not valid in MLflow; logged as %r", kind, key, safe)
        return safe

    def log_params(self, params: Mapping) -> None:
        """Log a (nested) config as params, flattened with :func:`flatten_config`.

        Values longer than MLflow's 6000 characters are cut with a ``...[truncated from N
        chars]`` marker and listed in the ``vsbench.truncated_params`` tag. MLflow params are
        immutable: a key logged again with a different value keeps its first value (warning).
        """
        if not self._active:
            return
        new: dict[str, str] = {}
        changed, cut_now = [], []
        for k, v in flatten_config(params).items():
            key = self._key(k, "param")
            value, cut = _truncate(v, MAX_PARAM_LENGTH)
            if cut:
                cut_now.append(key)
            old = self._params.get(key, new.get(key))
            if old is None:
                new[key] = value
            elif old != value:
                changed.append(key)
        if changed:
            log.warning("params %s of run %r were already logged with other values; keeping the first values", changed, self.run_name)
        if cut_now:
            log.warning(
                "params %s of run %r are longer than MLflow's %d characters; truncated", cut_now, self.run_name, MAX_PARAM_LENGTH
            )
            self._truncated.update(cut_now)
            self.set_tags({TRUNCATED_TAG: ",".join(sorted(self._truncated))})
        if not new:
            return
        from mlflow.entities import Param

        batch = [Param(k, v) for k, v in new.items()]
        with self._lock:  # the journal changes only under the lock a fallback replays it under
            self._params.update(new)
            self._call("logging params", lambda c, r: c.log_batch(r, params=batch, synchronous=True))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags (values as strings, cut to MLflow's 8000 characters)."""
        if not self._active:
            return
        clean = _clean_tags(tags)
        if not clean:
            return
        from mlflow.entities import RunTag

        batch = [RunTag(k, v) for k, v in clean.items()]
        with self._lock:
            self._tags.update(clean)
            self._call("setting tags", lambda c, r: c.log_batch(r, tags=batch, synchronous=True))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metric values at ``step`` (sent in the background; see the module docstring).

        NaN and inf are logged as they are. Values that ``float()`` cannot convert are skipped
        with a warning (once per key). A continued run drops values at steps it already holds.
        """
        if not self._active:
            return
        stamp = int(time.time() * 1000)
        step = int(step)
        keys = self._keys
        rows = []
        for k, v in metrics.items():
            key = keys.get(k)
            if key is None:
                key = keys[k] = self._key(k, "metric")
            through = self._logged_through.get(key)
            if through is not None and step <= through:
                continue
            try:
                value = float(v)
            except (TypeError, ValueError):
                if key not in self._bad_keys:
                    self._bad_keys.add(key)
                    log.warning("metric %r of run %r is not a number (%r); skipped", k, self.run_name, v)
                continue
            rows.append((key, value, stamp, step))
        with self._buf_lock:
            self._buffer.extend(rows)
            pending = len(self._buffer)
        if pending >= self._flush_every:
            self._wake.set()

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log a file (or a folder's contents) under ``artifact_path`` of the run's artifacts."""
        if not self._active:
            return
        p = Path(path)
        if not p.exists():
            log.warning("artifact %s of run %r does not exist; not logged", p, self.run_name)
            return
        entry = ("dir" if p.is_dir() else "file", str(p.resolve()), artifact_path)
        with self._lock:
            if self._journal:
                self._artifact_journal.append(entry)
            self._call(f"logging artifact {p}", lambda c, r: _put_artifact(c, r, entry))

    def log_dict(self, obj: Any, name: str) -> None:
        """Log ``obj`` as the text artifact ``name`` (e.g. ``"eval/summary.json"``).

        A string is written as is; anything else as indented JSON (non-JSON values via
        ``str``), which is also valid YAML.
        """
        if not self._active:
            return
        if isinstance(obj, str):
            text = obj
        else:
            try:
                text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
            except TypeError:  # keys of mixed types cannot be sorted
                text = json.dumps(obj, indent=2, default=str) + "\n"
        entry = ("text", text, name)
        with self._lock:
            if self._journal:
                self._artifact_journal.append(entry)
            self._call(f"logging artifact {name}", lambda c, r: _put_artifact(c, r, entry))

    # -- flushing and finishing ------------------------------------------------------------------

    def flush(self) -> None:
        """Send every buffered metric value now (blocking)."""
        if not self.enabled or self._client is None:
            return
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        with self._buf_lock:
            batch, self._buffer = self._buffer, []
        if not batch or self._client is None:
            return
        if self._journal:
            journal = self._metric_journal
            for key, value, stamp, step in batch:
                cols = journal.get(key)
                if cols is None:
                    cols = journal[key] = (array("d"), array("q"), array("q"))
                cols[0].append(value)
                cols[1].append(stamp)
                cols[2].append(step)
        from mlflow.entities import Metric

        def send(client, run_id):
            for i in range(0, len(batch), _METRICS_PER_REQUEST):
                metrics = [Metric(k, v, t, s) for k, v, t, s in batch[i : i + _METRICS_PER_REQUEST]]
                client.log_batch(run_id, metrics=metrics, synchronous=True)

        self._call(f"logging {len(batch)} metric values", send)

    def _flush_loop(self) -> None:
        while True:
            self._wake.wait(self._flush_seconds)
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # never let the thread die silently
                log.exception("flushing metrics of run %r failed", self.run_name)

    def finish(self, status: str = "FINISHED") -> None:
        """Flush, then mark the run ``FINISHED``, ``FAILED`` or ``KILLED``. Later calls do nothing."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        if not self._active:
            return
        self._active = False
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            self._flush_locked()
            self._call(f"marking the run {status}", lambda c, r: c.set_terminated(r, status), journaled=False)
        self.status = status

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.finish("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("KILLED")
        elif issubclass(exc_type, SystemExit) and exc.code in (0, None):
            self.finish("FINISHED")
        else:
            self.set_tags({ERROR_TAG: f"{exc_type.__name__}: {exc}"})
            self.finish("FAILED")
        return False

    def __repr__(self) -> str:
        state = "disabled" if not self.enabled else (self.status or ("open" if self._active else "closed"))
        return f"Tracker({self.experiment!r}, {self.run_name!r}, run_id={self.run_id}, uri={self.tracking_uri!r}, {state})"


def _put_artifact(client, run_id: str, entry: tuple[str, str, str | None]) -> None:
    kind, data, where = entry
    if kind == "text":
        client.log_text(run_id, data, where)
    elif kind == "dir":
        client.log_artifacts(run_id, data, where)
    else:
        if not Path(data).exists():
            raise FileNotFoundError(data)
        client.log_artifact(run_id, data, where)


@atexit.register
def _finish_open_trackers() -> None:
    for tracker in list(_live.values()):
        if tracker._active and tracker._pid == os.getpid():
            log.warning("MLflow run %r (%s) was not finished; marking it KILLED", tracker.run_name, tracker.run_id)
            try:
                tracker.finish("KILLED")
            except Exception as e:
                log.warning("finishing run %r at exit failed: %s", tracker.run_name, e)


# --------------------------------------------------------------------------------------------
# Reading runs back


def _reading_client(tracking_uri: str | None):
    """A client for reading, or None when the default-style sqlite file does not exist (yet)."""
    uri = _absolute_sqlite(resolve_tracking_uri(tracking_uri), Path.cwd())
    path = _sqlite_path(uri)
    if path is not None and not path.exists():
        return None, uri
    return _client(uri), uri


def end_abandoned_run(run_id: str, *, tracking_uri: str | None = None) -> bool:
    """Mark a run KILLED if it is still RUNNING: one whose process died and that nothing will
    continue (``--force`` starts its run afresh as a new MLflow run). True when it was marked."""
    from mlflow.exceptions import MlflowException

    client, _ = _reading_client(tracking_uri)
    if client is None:
        return False
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_terminated(run_id, "KILLED")
    except MlflowException as e:
        log.warning("could not mark MLflow run %s KILLED (%s); it may stay RUNNING", run_id, e)
        return False
    return True


def _search_all(client, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string=filter_string, max_results=1000, order_by=["attributes.start_time ASC"], page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _quotable(value: str) -> bool:
    return not any(c in value for c in "'\"`\\")


def find_finished_runs(experiment: str, tag: str, value: str, *, tracking_uri: str | None = None) -> list[str]:
    """Ids of the FINISHED runs of ``experiment`` whose tag ``tag`` equals ``value`` (oldest first).

    An experiment (or a default sqlite file) that does not exist has none. If the server does
    not answer, a warning is logged and the answer is [] (the suite then reruns; its trackers
    fall back to the local store).
    """
    client, uri = _reading_client(tracking_uri)
    if client is None:
        return []
    remote = not _is_local(uri)
    if remote and (why := _probe(uri)) is not None:
        log.warning("MLflow tracking server %s is unreachable (%s); treating %r as having no finished runs", uri, why, experiment)
        return []
    value = str(value)
    with _http_budget() if remote else nullcontext():
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        flt = "attributes.status = 'FINISHED'"
        if _quotable(tag) and _quotable(value):
            flt += f" and tags.`{tag}` = '{value}'"
        runs = _search_all(client, [exp.experiment_id], flt)
    return [r.info.run_id for r in runs if r.info.status == "FINISHED" and r.data.tags.get(tag) == value]


_FRAME_COLUMNS = ["run_id", "run_name", "status", "start_time", "end_time", "experiment_id", "parent_run_id"]


def runs_frame(experiment: str, *, tracking_uri: str | None = None, parent_run_id: str | None = None) -> pd.DataFrame:
    """The runs of ``experiment`` (or only the children of ``parent_run_id``) as a DataFrame.

    One row per run, oldest first: ``run_id, run_name, status, start_time, end_time`` (UTC
    timestamps), ``experiment_id, parent_run_id``, then ``params.<key>``, ``metrics.<key>`` (the
    last value logged) and ``tags.<key>`` columns, sorted. Deleted runs are left out.
    """
    import pandas as pd

    client, uri = _reading_client(tracking_uri)
    empty = pd.DataFrame(columns=_FRAME_COLUMNS)
    if client is None:
        return empty
    remote = not _is_local(uri)
    with _http_budget() if remote else nullcontext():
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return empty
        flt = ""
        if parent_run_id is not None:
            if not _quotable(parent_run_id):
                raise ValueError(f"not a run id: {parent_run_id!r}")
            flt = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
        runs = _search_all(client, [exp.experiment_id], flt)
    rows = []
    for r in runs:
        row = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "start_time": pd.to_datetime(r.info.start_time, unit="ms", utc=True) if r.info.start_time else pd.NaT,
            "end_time": pd.to_datetime(r.info.end_time, unit="ms", utc=True) if r.info.end_time else pd.NaT,
            "experiment_id": r.info.experiment_id,
            "parent_run_id": r.data.tags.get(PARENT_TAG),
        }
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in r.data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in r.data.tags.items()})
        rows.append(row)
    if not rows:
        return empty
    frame = pd.DataFrame(rows)
    rest = sorted(c for c in frame.columns if c not in _FRAME_COLUMNS)
    order = {"params": 0, "metrics": 1, "tags": 2}
    rest.sort(key=lambda c: (order.get(c.split(".", 1)[0], 3), c))
    return frame[_FRAME_COLUMNS + rest]
