"""MLflow tracking for the harness: one :class:`Tracker` per MLflow run, through ``MlflowClient`` with
explicit run ids (never MLflow's global active run: a parent and its children are open at once).

MLflow does the sending (``log_batch(..., synchronous=False)`` queues a batch for its background
threads and splits it to its request limits), the user/source/git tags of a run (its run-context
providers, ``resolve_tags``) and paging through searches. This module adds what MLflow lacks:

- **Stores.** Default ``sqlite:///mlflow.db`` (made absolute when a tracker starts), artifacts in
  ``./mlartifacts``; ``MLFLOW_TRACKING_URI`` or an explicit URI (explicit > environment > default)
  may name a server. A sqlite store is opened under an ``flock`` on ``<db>.lock``: MLflow creates
  and migrates a new database on first open, and two processes doing that at once break it.
  Experiments are tagged ``mlflow.experimentKind = custom_model_development`` so that MLflow 3's
  UI opens their runs; a child run names its parent with ``mlflow.parentRunId``.
- **Rank 0 only.** ``enabled=None`` means rank 0 (of an initialised ``torch.distributed`` group,
  else torchrun's ``RANK``); a disabled tracker imports, opens and logs nothing.
- **Valid keys and values.** Keys are made valid (characters, path-like names, 250 characters),
  with a warning; param values over 6000 characters and tags over 8000 are cut with a
  ``...[truncated from N chars]`` note (cut params listed in ``vsbench.truncated_params``). A
  param logged again with another value keeps its first. NaN and inf metrics are logged as such.
- **Metrics.** Buffered (timestamped when logged) and handed to MLflow's queue once ``flush_every``
  values wait or ``flush_seconds`` have passed (checked as values are logged); the batch in flight
  is awaited before the next, so a failed batch shows at the next send. :meth:`~Tracker.flush`
  (training calls it before every checkpoint) and :meth:`~Tracker.finish` send synchronously.
- **No metric lost to a server outage.** A server gets a ``GET /health`` probe before the run opens
  and a short HTTP retry budget (:data:`HTTP_BUDGET`, put in the environment only by the main
  thread, only where unset). If it fails, at start or later, the run moves to ``./mlflow-fallback.db``
  (artifacts in ``./mlartifacts-fallback``) with everything logged so far, replayed from a journal
  (params, tags, every metric value in packed arrays, artifact paths: keep logged files until the
  run ends), tagged ``vsbench.fallback_from`` and ``vsbench.remote_run_id``. A family stays in one
  store: a child of a parent that fell back starts there, a child that falls back takes its open
  parent along. :mod:`core.tracking_sync` puts such runs back on the server later. Any other
  failure is a warning and drops that call: tracking never stops training.
- **Continuing.** ``continue_run_id`` reopens an interrupted run (RUNNING again, its
  ``vsbench.error`` removed) unless it is FINISHED or not in the experiment; values at steps it
  already holds for a metric are dropped. As a context manager a tracker ends FINISHED, FAILED
  (with ``vsbench.error``) or KILLED (Ctrl-C); trackers left open at exit end KILLED. A tracker is
  used from one thread.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import logging
import os
import platform
import posixpath
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from array import array
from collections.abc import Callable, Mapping
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
FALLBACK_URI = f"sqlite:///{FALLBACK_DB}"  # in the working directory of the tracker
ARTIFACT_DIR, FALLBACK_ARTIFACT_DIR = "mlartifacts", "mlartifacts-fallback"
STATUSES = ("FINISHED", "FAILED", "KILLED")
STORE_LOCK_TIMEOUT_S = 120.0  # how long opening a sqlite store waits for a process creating or migrating it
PARENT_TAG = "mlflow.parentRunId"
FALLBACK_TAG = "vsbench.fallback_from"
REMOTE_RUN_TAG = "vsbench.remote_run_id"
TRUNCATED_TAG = "vsbench.truncated_params"
ERROR_TAG = "vsbench.error"
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
MAX_KEY_LENGTH, MAX_PARAM_LENGTH, MAX_TAG_LENGTH = 250, 6000, 8000  # mlflow.utils.validation's limits
PROBE_TIMEOUT_S = 2.5
#: For servers: MLflow's default (7 retries, 120 s timeouts) would stall a run for minutes before it falls back.
HTTP_BUDGET = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


# --------------------------------------------------------------------------------------------
# Stores


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """The tracking URI to use: ``explicit`` > ``MLFLOW_TRACKING_URI`` > :data:`DEFAULT_URI`."""
    for candidate in (explicit, os.environ.get("MLFLOW_TRACKING_URI")):
        if candidate and candidate.strip():
            return candidate.strip()
    return DEFAULT_URI


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative paths as given), else None."""
    path = uri[len("sqlite:///"):].split("?", 1)[0] if uri.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


def _absolute_sqlite(uri: str, cwd: Path) -> str:
    """``uri`` with a relative sqlite path made absolute against ``cwd`` (a later chdir keeps the store)."""
    path = _sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    return f"sqlite:///{(cwd / path).resolve()}" + (uri[uri.index("?"):] if "?" in uri else "")


def _is_local(uri: str) -> bool:
    """Whether ``uri`` is a store on this machine (sqlite file, file store, plain or Windows path)."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file", "sqlite") or len(scheme) == 1


def _artifact_root(uri: str) -> Path | None:
    """Where a sqlite store keeps artifacts: ``mlartifacts`` (``mlartifacts-fallback``) beside the db."""
    path = _sqlite_path(uri)
    return None if path is None else path.parent / (FALLBACK_ARTIFACT_DIR if path.name == FALLBACK_DB else ARTIFACT_DIR)


def _probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
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


def _client(uri: str):
    """A client of the store at ``uri``: a sqlite store opened (created or migrated when new) under
    ``<db>.lock``; for a server, :data:`HTTP_BUDGET` where unset (by the main thread only)."""
    from mlflow.tracking import MlflowClient

    if not _is_local(uri) and threading.current_thread() is threading.main_thread():
        for name, value in HTTP_BUDGET.items():
            os.environ.setdefault(name, value)
    db = _sqlite_path(uri)
    if db is None or (db.parent.is_dir() and not os.access(db.parent, os.W_OK)):  # nothing can be created there
        return MlflowClient(tracking_uri=uri)
    try:
        with file_lock(db.with_name(db.name + ".lock"), timeout=STORE_LOCK_TIMEOUT_S):
            return MlflowClient(tracking_uri=uri)
    except LockTimeout as err:
        raise LockTimeout(f"cannot open the MLflow store {uri}: {err}; that process is creating or migrating the store: let it "
                          "finish (or end it, if it hangs), then try again") from None


def _experiment_id(client, name: str, artifact_root: Path | None) -> str:
    """Get, create or restore the experiment ``name``, tagged as model training (:data:`EXPERIMENT_KIND`)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            location = artifact_root.resolve().as_uri() if artifact_root is not None else None
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


# --------------------------------------------------------------------------------------------
# Params, keys and runtime tags


def flatten_config(config: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested mappings and dataclasses as ``{"a.b.c": "value"}``: lists, tuples and sets as JSON
    (``[1, 2]``), an empty mapping as ``"{}"``, anything else ``str(value)``; not truncated."""
    as_dict = lambda v: {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
    out: dict[str, str] = {}
    for k, v in (as_dict(config) if dataclasses.is_dataclass(config) else config).items():
        key = f"{prefix}.{k}" if prefix else str(k)
        v = as_dict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
        if isinstance(v, Mapping):
            out.update(flatten_config(v, key) if v else {key: "{}"})
        elif isinstance(v, (list, tuple, set, frozenset)):
            items = sorted(v, key=repr) if isinstance(v, (set, frozenset)) else list(v)
            try:
                out[key] = json.dumps(items, default=str)
            except (TypeError, ValueError):
                out[key] = str(items)
        else:
            out[key] = str(v)
    return out


def _safe_key(key: Any, kind: str | None = None) -> str:
    """A key MLflow accepts on every OS: ``[\\w./\\- ]`` only, not path-like, at most 250 characters
    (a warning names a changed ``kind`` key)."""
    original = str(key)
    k = re.sub(r"[^\w./\- ]", "_", original)
    if k in ("", ".") or k.startswith(("/", "..")) or posixpath.normpath(k) != k:
        k = "_" + k.replace("/", "_")
    if len(k) > MAX_KEY_LENGTH:
        k = f"{k[: MAX_KEY_LENGTH - 9]}-{hashlib.sha1(original.encode()).hexdigest()[:8]}"
    if kind and k != key:
        log.warning("%s name %r is not valid in MLflow; logged as %r", kind, key, k)
    return k


def _truncate(value: str, limit: int) -> tuple[str, bool]:
    """``value`` cut to ``limit`` characters with a note saying so, and whether it was cut."""
    if len(value) <= limit:
        return value, False
    note = f"...[truncated from {len(value)} chars]"
    return value[: limit - len(note)] + note, True


def _clean_tags(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """Tags with valid keys and string values cut to MLflow's 8000 characters (warning)."""
    out = {}
    for k, v in (tags or {}).items():
        out[_safe_key(k)], cut = _truncate(str(v), MAX_TAG_LENGTH)
        if cut:
            log.warning("tag %r is longer than MLflow's %d characters; truncated", k, MAX_TAG_LENGTH)
    return out


@lru_cache(maxsize=1)
def git_commit() -> str:
    """Short SHA of the vsbench checkout, ``-dirty`` with changes to tracked files (or when that cannot be
    told), ``unknown`` without git; ``VSBENCH_GIT_COMMIT`` overrides it. Uses GitPython, as MLflow does."""
    if os.environ.get("VSBENCH_GIT_COMMIT"):
        return os.environ["VSBENCH_GIT_COMMIT"]
    try:
        import git

        repo = git.Repo(Path(__file__).resolve().parents[1], search_parent_directories=True)
        sha = repo.git.rev_parse("HEAD", short=True)
    except Exception:
        return "unknown"
    try:
        dirty = repo.is_dirty(untracked_files=False)
    except Exception:
        dirty = True
    return sha + ("-dirty" if dirty else "")


def runtime_tags(device: Any = None) -> dict[str, str]:
    """Where a run ran: vsbench version, git commit, torch/CUDA/cuDNN, device (by default the current
    CUDA device, else the CPU), Python and host."""
    import torch

    from core import __version__

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if dev.type == "cuda":
            name = torch.cuda.get_device_name(dev.index if dev.index is not None else torch.cuda.current_device())
        elif dev.type == "cpu":
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                name = next((line.split(":", 1)[1].strip() for line in f if line.lower().startswith("model name")), "")
            name = f"cpu ({name or platform.processor() or platform.machine() or 'unknown'})"
        else:
            name = str(dev)
    except Exception as e:  # a device we cannot query must not stop a run
        name = f"{dev} (unknown: {type(e).__name__})"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"vsbench.version": __version__, "git.commit": git_commit(), "torch.version": torch.__version__,
            "cuda.version": torch.version.cuda or "none", "cudnn.version": str(cudnn) if cudnn else "none", "device": name,
            "python.version": platform.python_version(), "host": socket.gethostname()}


def _is_rank_zero() -> bool:
    """Rank 0 of an initialised process group, else of torchrun's ``RANK`` (True without either)."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to ask
    try:
        if dist is not None and dist.is_available() and dist.is_initialized():
            return dist.get_rank() == 0
    except Exception:  # a broken process group: ask RANK
        pass
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


# --------------------------------------------------------------------------------------------
# The tracker

_live: weakref.WeakValueDictionary[str, Tracker] = weakref.WeakValueDictionary()  # open trackers, by every run id they had
_fallback_ids: dict[str, str] = {}  # run id -> its run in the fallback store (a fallback run maps to itself)


class Tracker:
    """One MLflow run: params, tags, metrics, artifacts (module docstring). ``run_id`` and
    ``experiment_id`` are None when disabled; ``tracking_uri`` is the store in use (the fallback store
    after a failure), ``requested_uri`` the one asked for; ``fell_back``; ``status`` once finished."""

    def __init__(self, experiment: str, run_name: str, *, tracking_uri: str | None = None, parent_run_id: str | None = None,
                 tags: Mapping[str, str] | None = None, enabled: bool | None = None, flush_every: int = 200,
                 flush_seconds: float = 5.0, continue_run_id: str | None = None) -> None:
        self.experiment, self.run_name, self.parent_run_id = experiment, run_name, parent_run_id
        self.run_id = self.experiment_id = self.status = self._client = None
        self.tracking_uri = self.requested_uri = resolve_tracking_uri(tracking_uri)
        self.fell_back = self._active = False  # _active: enabled, open and not finished
        self.enabled = _is_rank_zero() if enabled is None else bool(enabled)
        if not self.enabled:
            return
        cwd = Path.cwd()
        self.tracking_uri = self.requested_uri = _absolute_sqlite(self.tracking_uri, cwd)
        self._fallback_uri, self._remote = f"sqlite:///{cwd.resolve() / FALLBACK_DB}", not _is_local(self.tracking_uri)
        self._flush_every, self._flush_seconds, self._sent_at = max(1, int(flush_every)), float(flush_seconds), time.monotonic()
        self._buffer, self._inflight = [], None  # Metrics not handed to MLflow yet; (RunOperations, batch) in flight
        self._journal: dict[str, tuple[array, array, array]] = {}  # server runs: metric -> values, timestamps, steps
        self._artifacts: list[tuple[str, str, str | None]] = []  # server runs: artifacts to log again after a fallback
        self._params: dict[str, str] = {}
        self._truncated, self._bad_keys, self._keys = set(), set(), {}
        self._logged_through: dict[str, int] = {}  # a continued run: metric -> last step it holds
        self._pid, self._start_ms = os.getpid(), int(time.time() * 1000)
        self._tags = self._initial_tags(tags)
        self._open(continue_run_id)
        if self._client is not None:
            _live[self.run_id], self._active = self, True

    def _initial_tags(self, tags: Mapping[str, str] | None) -> dict[str, str]:
        """:func:`runtime_tags`, MLflow's context tags (user, source, git), the caller's, the parent link."""
        from mlflow.tracking.context.registry import resolve_tags

        try:
            runtime = runtime_tags()
        except Exception as e:  # describing the machine must not stop a run
            log.warning("could not collect runtime tags: %s: %s", type(e).__name__, e)
            runtime = {"vsbench.runtime_tags_error": f"{type(e).__name__}: {e}"}
        return resolve_tags({**runtime, **_clean_tags(tags), **({PARENT_TAG: self.parent_run_id} if self.parent_run_id else {})})

    def _open(self, continue_id: str | None) -> None:
        """Open (or continue) the run; a server that does not answer sends it to the fallback store."""
        if self._remote and self.parent_run_id in _fallback_ids:
            return self._fallback(f"its parent run {self.parent_run_id} already logs to the fallback store", quiet=True)
        if (why := _probe(self.tracking_uri)) is not None:
            return self._fallback(why)
        try:
            self._start(self.tracking_uri, self._tags, continue_id)
        except Exception as e:
            if self._remote and getattr(e, "error_code", None) != "INVALID_PARAMETER_VALUE":
                return self._fallback(f"{type(e).__name__}: {e}")
            log.warning("could not open MLflow run %r of experiment %r in %s (%s: %s); tracking is off for this run",
                        self.run_name, self.experiment, self.tracking_uri, type(e).__name__, e)

    def _start(self, uri: str, tags: dict[str, str], continue_id: str | None = None) -> None:
        """Open the run in the store at ``uri``: the run ``continue_id`` when it can be continued, else a new one."""
        client = _client(uri)
        exp_id = _experiment_id(client, self.experiment, _artifact_root(uri))
        run = (self._reopen(client, exp_id, continue_id) if continue_id else None) or client.create_run(
            exp_id, start_time=self._start_ms, tags=tags, run_name=self.run_name)
        self._client, self.experiment_id, self.run_id, self.tracking_uri = client, exp_id, run.info.run_id, uri

    def _reopen(self, client, exp_id: str, run_id: str):
        """The run ``run_id`` RUNNING again with this segment's tags, or None when it cannot be continued."""
        from mlflow.entities import RunTag
        from mlflow.exceptions import MlflowException

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

    def _fallback(self, reason: str, quiet: bool = False) -> None:
        """Move the run to the fallback store and log there again everything logged so far."""
        from mlflow.entities import Metric, Param

        remote_id = self.run_id
        (log.info if quiet else log.warning)(
            "MLflow tracking server %s is unreachable (%s); logging run %r of experiment %r to the local fallback store %s "
            "(artifacts in %s)", self.requested_uri, reason, self.run_name, self.experiment, self._fallback_uri,
            _artifact_root(self._fallback_uri))
        tags = {**self._tags, FALLBACK_TAG: self.requested_uri, **({REMOTE_RUN_TAG: remote_id} if remote_id else {})}
        parent = _live.get(self.parent_run_id) if self.parent_run_id not in _fallback_ids else None
        if parent is not None and parent is not self and parent._active and parent._remote:
            parent._fallback(f"its child run {self.run_name!r} lost the server")  # the family stays in one store
        if self.parent_run_id:
            tags[PARENT_TAG] = _fallback_ids.get(self.parent_run_id, self.parent_run_id)
        journal, artifacts = self._journal, self._artifacts
        self._client, self._inflight, self._remote, self._journal, self._artifacts = None, None, False, {}, []
        try:
            self._start(self._fallback_uri, tags)
        except Exception as e:
            log.warning("could not open run %r in the fallback store %s either (%s: %s); tracking is off for this run",
                        self.run_name, self._fallback_uri, type(e).__name__, e)
            return
        self.fell_back, _live[self.run_id] = True, self
        _fallback_ids.update({self.run_id: self.run_id, **({remote_id: self.run_id} if remote_id else {})})
        self._call("replaying params", lambda c, r: c.log_batch(r, params=[Param(k, v) for k, v in self._params.items()],
                                                                 synchronous=True))
        for key, (values, stamps, steps) in journal.items():
            for i in range(0, len(values), 1000):
                chunk = [Metric(key, *m) for m in zip(values[i:i + 1000], stamps[i:i + 1000], steps[i:i + 1000])]
                self._call(f"replaying metric {key!r}", lambda c, r, chunk=chunk: c.log_batch(r, metrics=chunk, synchronous=True))
        for entry in artifacts:
            self._call(f"replaying artifact {entry[2] if entry[0] == 'text' else entry[1]!r}", lambda c, r, e=entry: _put(c, r, e))

    def _call(self, what: str, fn: Callable[[Any, str], Any], *, journaled: bool = True) -> None:
        """``fn(client, run_id)`` on the current store. A failing server (anything but a refused value)
        moves the run to the fallback store, where the journal replays ``fn``'s data (or ``fn`` runs again
        when not ``journaled``); any other failure is a warning and the call is dropped."""
        if self._client is None:
            return
        try:
            fn(self._client, self.run_id)
        except Exception as e:
            if not self._remote or getattr(e, "error_code", None) == "INVALID_PARAMETER_VALUE":
                log.warning("MLflow: %s for run %r in %s failed: %s", what, self.run_name, self.tracking_uri, e)
                return
            self._fallback(f"{what} failed: {type(e).__name__}: {e}")
            if not journaled:
                self._call(what, fn)

    # -- logging -------------------------------------------------------------------------------

    def log_params(self, params: Mapping) -> None:
        """Log a (nested) config as params (:func:`flatten_config`); long values cut, changed ones kept first."""
        if not self._active:
            return
        new, changed, cut_now = {}, [], []
        for k, v in flatten_config(params).items():
            key = _safe_key(k, "param")
            value, cut = _truncate(v, MAX_PARAM_LENGTH)
            cut_now += [key] if cut else []
            if (old := self._params.get(key, new.get(key))) is None:
                new[key] = value
            elif old != value:
                changed.append(key)
        if changed:
            log.warning("params %s of run %r were already logged with other values; keeping the first values", changed, self.run_name)
        if cut_now:
            log.warning("params %s of run %r are longer than MLflow's %d characters; truncated", cut_now, self.run_name,
                        MAX_PARAM_LENGTH)
            self._truncated.update(cut_now)
            self.set_tags({TRUNCATED_TAG: ",".join(sorted(self._truncated))})
        if new:
            from mlflow.entities import Param

            self._params.update(new)
            self._call("logging params", lambda c, r: c.log_batch(r, params=[Param(k, v) for k, v in new.items()], synchronous=True))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set run tags (string values, cut to MLflow's 8000 characters)."""
        if self._active and (clean := _clean_tags(tags)):
            from mlflow.entities import RunTag

            self._tags.update(clean)
            self._call("setting tags", lambda c, r: c.log_batch(r, tags=[RunTag(k, v) for k, v in clean.items()], synchronous=True))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer metric values at ``step``. Values ``float()`` refuses are skipped with a warning (once
        per key); a continued run drops values at steps it already holds."""
        if not self._active:
            return
        from mlflow.entities import Metric

        stamp, step = int(time.time() * 1000), int(step)
        for k, v in metrics.items():
            key = self._keys[k] if k in self._keys else self._keys.setdefault(k, _safe_key(k, "metric"))
            if step <= self._logged_through.get(key, step - 1):
                continue
            try:
                self._buffer.append(Metric(key, float(v), stamp, step))
            except (TypeError, ValueError):
                if key not in self._bad_keys:
                    self._bad_keys.add(key)
                    log.warning("metric %r of run %r is not a number (%r); skipped", k, self.run_name, v)
        if len(self._buffer) >= self._flush_every or time.monotonic() - self._sent_at >= self._flush_seconds:
            self._send(wait=False)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log a file (or a folder's contents) under ``artifact_path`` of the run's artifacts."""
        if not self._active:
            return
        if not (p := Path(path)).exists():
            log.warning("artifact %s of run %r does not exist; not logged", p, self.run_name)
            return
        self._log_artifact(("dir" if p.is_dir() else "file", str(p.resolve()), artifact_path))

    def log_dict(self, obj: Any, name: str) -> None:
        """Log ``obj`` as the text artifact ``name``: a string as is, else indented JSON (also YAML)."""
        if not self._active:
            return
        try:
            text = obj if isinstance(obj, str) else json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
        except TypeError:  # keys of mixed types cannot be sorted
            text = json.dumps(obj, indent=2, default=str) + "\n"
        self._log_artifact(("text", text, name))

    def _log_artifact(self, entry: tuple[str, str, str | None]) -> None:
        if self._remote:
            self._artifacts.append(entry)
        self._call(f"logging artifact {entry[2] if entry[0] == 'text' else entry[1]}", lambda c, r: _put(c, r, entry))

    # -- sending and finishing -------------------------------------------------------------------

    def _send(self, wait: bool) -> None:
        """Await the batch in flight, then hand the buffer to MLflow's queue (synchronously when ``wait``).
        A batch the queue failed (or could not take: at exit, once MLflow has shut it down) is sent
        again synchronously, so its failure is handled like any call's."""
        if self._inflight is not None:
            (op, sent), self._inflight = self._inflight, None
            try:
                op.wait()
            except Exception:
                self._call(f"logging {len(sent)} metric values", lambda c, r: c.log_batch(r, metrics=sent, synchronous=True))
        batch, self._buffer, self._sent_at = self._buffer, [], time.monotonic()
        for m in batch if self._remote else ():
            values, stamps, steps = self._journal.setdefault(m.key, (array("d"), array("q"), array("q")))
            values.append(m.value)
            stamps.append(m.timestamp)
            steps.append(m.step)

        def send(client, run_id):
            op = client.log_batch(run_id, metrics=batch, synchronous=wait)
            self._inflight = None if op is None else (op, batch)

        if batch:
            self._call(f"logging {len(batch)} metric values", send)

    def flush(self) -> None:
        """Send every buffered metric value now (blocking)."""
        if self._active:
            self._send(wait=True)

    def finish(self, status: str = "FINISHED") -> None:
        """Flush, then mark the run ``FINISHED``, ``FAILED`` or ``KILLED``. Later calls do nothing."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        if self._active:
            self._send(wait=True)
            self._active = False
            self._call(f"marking the run {status}", lambda c, r: c.set_terminated(r, status), journaled=False)
            self.status = status

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None or issubclass(exc_type, SystemExit) and exc.code in (0, None):
            self.finish("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("KILLED")
        else:
            self.set_tags({ERROR_TAG: f"{exc_type.__name__}: {exc}"})
            self.finish("FAILED")
        return False


def _put(client, run_id: str, entry: tuple[str, str, str | None]) -> None:
    """Log an artifact entry: ``("text", text, name)``, ``("file", path, folder)`` or ``("dir", path, folder)``."""
    kind, data, where = entry
    {"text": client.log_text, "dir": client.log_artifacts, "file": client.log_artifact}[kind](run_id, data, where)


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
    """(client, uri) for reading; no client when a sqlite file does not exist (it is not created by asking)."""
    uri = _absolute_sqlite(resolve_tracking_uri(tracking_uri), Path.cwd())
    path = _sqlite_path(uri)
    return (None if path is not None and not path.exists() else _client(uri)), uri


def end_abandoned_run(run_id: str, *, tracking_uri: str | None = None) -> bool:
    """Mark a run KILLED if it is still RUNNING (its process died and ``--force`` starts afresh); True if marked."""
    from mlflow.exceptions import MlflowException

    client, _ = _reading_client(tracking_uri)
    try:
        if client is None or client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_terminated(run_id, "KILLED")
    except MlflowException as e:
        log.warning("could not mark MLflow run %s KILLED (%s); it may stay RUNNING", run_id, e)
        return False
    return True


def _search(client, experiment: str, filter_string: str) -> list:
    """Every run of ``experiment`` matching ``filter_string``, oldest first ([] without the experiment)."""
    from mlflow.utils import get_results_from_paginated_fn

    if client is None or (exp := client.get_experiment_by_name(experiment)) is None:
        return []
    return get_results_from_paginated_fn(lambda n, token: client.search_runs(
        [exp.experiment_id], filter_string, max_results=n, order_by=["attributes.start_time ASC"], page_token=token), 1000)


def _quotable(value: str) -> bool:
    return not any(c in value for c in "'\"`\\")


def find_finished_runs(experiment: str, tag: str, value: str, *, tracking_uri: str | None = None) -> list[str]:
    """Ids of the FINISHED runs of ``experiment`` whose tag ``tag`` is ``value``, oldest first; none in a store
    or experiment that does not exist, or (with a warning) on a server that does not answer."""
    client, uri = _reading_client(tracking_uri)
    if client is not None and (why := _probe(uri)) is not None:
        log.warning("MLflow tracking server %s is unreachable (%s); treating %r as having no finished runs", uri, why, experiment)
        return []
    value = str(value)
    flt = "attributes.status = 'FINISHED'" + (f" and tags.`{tag}` = '{value}'" if _quotable(tag) and _quotable(value) else "")
    return [r.info.run_id for r in _search(client, experiment, flt) if r.data.tags.get(tag) == value]


_FRAME_COLUMNS = ["run_id", "run_name", "status", "start_time", "end_time", "experiment_id", "parent_run_id"]


def runs_frame(experiment: str, *, tracking_uri: str | None = None, parent_run_id: str | None = None) -> pd.DataFrame:
    """The runs of ``experiment`` (or the children of ``parent_run_id``), oldest first: ``run_id, run_name,
    status, start_time, end_time`` (UTC), ``experiment_id, parent_run_id``, then ``params.*``, ``metrics.*``
    (last value) and ``tags.*``, each sorted. Deleted runs are left out."""
    import pandas as pd

    if parent_run_id is not None and not _quotable(parent_run_id):
        raise ValueError(f"not a run id: {parent_run_id!r}")
    flt = f"tags.`{PARENT_TAG}` = '{parent_run_id}'" if parent_run_id is not None else ""
    rows = [{"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status, "start_time": r.info.start_time or None,
             "end_time": r.info.end_time or None, "experiment_id": r.info.experiment_id, "parent_run_id": r.data.tags.get(PARENT_TAG),
             **{f"params.{k}": v for k, v in r.data.params.items()}, **{f"metrics.{k}": v for k, v in r.data.metrics.items()},
             **{f"tags.{k}": v for k, v in r.data.tags.items()}} for r in _search(_reading_client(tracking_uri)[0], experiment, flt)]
    frame = pd.DataFrame(rows, columns=None if rows else _FRAME_COLUMNS)
    for column in ("start_time", "end_time"):
        frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True)
    order = {"params": 0, "metrics": 1, "tags": 2}
    return frame[_FRAME_COLUMNS + sorted(frame.columns.difference(_FRAME_COLUMNS), key=lambda c: (order[c.split(".", 1)[0]], c))]
