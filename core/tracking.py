"""MLflow tracking for the harness: one :class:`Tracker` per MLflow run, through ``MlflowClient`` with
explicit run ids (never MLflow's global active run: a parent and its children are open at once).

Which store a URI names and how one is opened is :mod:`core.tracking_store`; MLflow gives the
user/source/git tags of a run (its run-context providers) and pages through searches. This
module adds what MLflow lacks:

- **Always a local store first.** A run is written to a sqlite store on this machine: the one
  asked for, or, when a server is asked for, the working folder's outbox (``mlflow-outbox.db``),
  from which :mod:`core.tracking_sync` copies it to the server when the run starts, at every
  :meth:`~Tracker.flush` (training flushes before every checkpoint) and when it ends. A server
  that is down loses nothing: the copy waits for ``vsbench sync`` or the next ``vsbench run``.
  ``run_id`` is the local run's id, ``server_run_id`` its copy's once made.
- **Rank 0 only.** ``enabled=None`` means rank 0 (of an initialised ``torch.distributed`` group,
  else torchrun's ``RANK``); a disabled tracker imports, opens and logs nothing.
- **Valid keys and values.** Keys are made valid (characters, path-like names, 250 characters),
  with a warning; param values over 6000 characters and tags over 8000 are cut with a
  ``...[truncated from N chars]`` note (cut params listed in ``vsbench.truncated_params``). A
  param logged again with another value keeps its first. NaN and inf metrics are logged as such.
- **Metrics** are buffered (timestamped when logged) and written once ``flush_every`` values wait
  or ``flush_seconds`` have passed, and at :meth:`~Tracker.flush` and :meth:`~Tracker.finish`.
- **Continuing.** ``continue_run_id`` reopens an interrupted run (RUNNING again, its
  ``vsbench.error`` removed) unless it is FINISHED or not in the experiment; values at steps it
  already holds for a metric are dropped. As a context manager a tracker ends FINISHED, FAILED
  (with ``vsbench.error``) or KILLED (Ctrl-C); trackers left open at exit end KILLED. A failing
  call is a warning and is dropped: tracking never stops training. A tracker is used from one thread.
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
import time
import weakref
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.preemption import Preempted
from core.tracking_store import (absolute_sqlite, artifact_root, experiment_id, is_local, open_client, outbox_uri, probe,
                                 resolve_tracking_uri, sqlite_path)
from core.tracking_sync import COMPLETE_TAG, PARENT_TAG, SERVER_TAG, push_run

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

STATUSES = ("FINISHED", "FAILED", "KILLED")
TRUNCATED_TAG = "vsbench.truncated_params"
ERROR_TAG = "vsbench.error"
MAX_KEY_LENGTH, MAX_PARAM_LENGTH, MAX_TAG_LENGTH = 250, 6000, 8000  # mlflow.utils.validation's limits


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

_live: weakref.WeakSet[Tracker] = weakref.WeakSet()  # open trackers, finished KILLED at exit


class Tracker:
    """One MLflow run: params, tags, metrics, artifacts (module docstring). ``run_id`` and
    ``experiment_id`` are None when disabled (or when the local store cannot be opened);
    ``tracking_uri`` is the local store written to, ``server`` the server it is copied to (or
    None), ``server_run_id`` the copy's id once made; ``status`` once finished."""

    def __init__(self, experiment: str, run_name: str, *, tracking_uri: str | None = None, parent_run_id: str | None = None,
                 tags: Mapping[str, str] | None = None, enabled: bool | None = None, flush_every: int = 200,
                 flush_seconds: float = 5.0, continue_run_id: str | None = None) -> None:
        self.experiment, self.run_name, self.parent_run_id = experiment, run_name, parent_run_id
        self.run_id = self.experiment_id = self.status = self.server_run_id = self.server = None
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.enabled, self._active = _is_rank_zero() if enabled is None else bool(enabled), False
        if not self.enabled:
            return
        uri = absolute_sqlite(self.tracking_uri, Path.cwd())
        self.server, self.tracking_uri = (None, uri) if is_local(uri) else (uri, outbox_uri())
        self._flush_every, self._flush_seconds, self._written_at = max(1, int(flush_every)), float(flush_seconds), time.monotonic()
        self._buffer, self._params, self._keys, self._logged_through = [], {}, {}, {}  # _logged_through: metric -> last step held
        self._truncated, self._bad_keys, self._pid, self._push_failed = set(), set(), os.getpid(), False
        extra = {**({PARENT_TAG: parent_run_id} if parent_run_id else {}), **({SERVER_TAG: self.server} if self.server else {})}
        self._tags = _initial_tags({**_clean_tags(tags), **extra})
        try:
            self._client = open_client(self.tracking_uri)
            self.experiment_id = experiment_id(self._client, experiment, artifact_root(self.tracking_uri))
            run = (self._reopen(continue_run_id) if continue_run_id else None) or self._client.create_run(
                self.experiment_id, tags=self._tags, run_name=run_name)
        except Exception as e:
            log.warning("could not open MLflow run %r of experiment %r in %s (%s: %s); tracking is off for this run",
                        run_name, experiment, self.tracking_uri, type(e).__name__, e)
            return
        self.run_id, self._active = run.info.run_id, True
        _live.add(self)
        self._push()

    def _reopen(self, run_id: str):
        """The run ``run_id`` RUNNING again with this segment's tags, or None when it cannot be continued."""
        from mlflow.entities import RunTag
        from mlflow.exceptions import MlflowException

        client = self._client
        try:
            run = client.get_run(run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run = None
        if run is None or run.info.experiment_id != self.experiment_id or run.info.lifecycle_stage != "active":
            log.warning("MLflow run %s, where %r was tracked before, is not a run of experiment %r in %s; tracking %r as a new run",
                        run_id, self.run_name, self.experiment, self.tracking_uri, self.run_name)
            return None
        if run.info.status == "FINISHED":
            log.info("MLflow run %s of %r finished before; tracking this one as a new run", run_id, self.run_name)
            return None
        client.update_run(run_id, status="RUNNING")
        for tag in (ERROR_TAG, COMPLETE_TAG):  # the failed segment's error is not this run's outcome; its copy is not complete
            if tag in run.data.tags:
                client.delete_tag(run_id, tag)
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in self._tags.items()], synchronous=True)
        self._params.update(run.data.params)
        self._logged_through = {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}
        log.info("continuing MLflow run %s of %r (it was %s)", run_id, self.run_name, run.info.status)
        return run

    def _call(self, what: str, fn: Callable[[Any, str], Any]) -> None:
        """``fn(client, run_id)``; a failure is a warning and the call is dropped."""
        try:
            fn(self._client, self.run_id)
        except Exception as e:
            log.warning("MLflow: %s for run %r in %s failed: %s: %s", what, self.run_name, self.tracking_uri, type(e).__name__, e)

    def _push(self) -> None:
        """Copy the run to the server, if there is one; when that fails the run waits in the outbox."""
        if self.server is None:
            return
        try:
            self.server_run_id = push_run(self.tracking_uri, self.run_id, self.server)
        except Exception as e:
            (log.info if self._push_failed else log.warning)(
                "MLflow run %r is not on the tracking server %s (%s: %s): it is kept in %s and copied when the server answers "
                "(at this run's next flush, by `vsbench sync` or by the next `vsbench run`)", self.run_name, self.server,
                type(e).__name__, e, self.tracking_uri)
            self._push_failed = True

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
        if len(self._buffer) >= self._flush_every or time.monotonic() - self._written_at >= self._flush_seconds:
            self._write()

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log a file (or a folder's contents) under ``artifact_path`` of the run's artifacts."""
        if not self._active:
            return
        if not (p := Path(path)).exists():
            log.warning("artifact %s of run %r does not exist; not logged", p, self.run_name)
            return
        log_files = (lambda c, r: c.log_artifacts(r, str(p), artifact_path)) if p.is_dir() else (
            lambda c, r: c.log_artifact(r, str(p), artifact_path))
        self._call(f"logging artifact {p}", log_files)

    def log_dict(self, obj: Any, name: str) -> None:
        """Log ``obj`` as the text artifact ``name``: a string as is, else indented JSON (also YAML)."""
        if not self._active:
            return
        try:
            text = obj if isinstance(obj, str) else json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
        except TypeError:  # keys of mixed types cannot be sorted
            text = json.dumps(obj, indent=2, default=str) + "\n"
        self._call(f"logging artifact {name}", lambda c, r: c.log_text(r, text, name))

    # -- writing and finishing -----------------------------------------------------------------

    def _write(self) -> None:
        batch, self._buffer, self._written_at = self._buffer, [], time.monotonic()
        if batch:
            self._call(f"logging {len(batch)} metric values", lambda c, r: c.log_batch(r, metrics=batch, synchronous=True))

    def flush(self) -> None:
        """Write every buffered metric value now and copy the run to its server (blocking)."""
        if self._active:
            self._write()
            self._push()

    def finish(self, status: str = "FINISHED") -> None:
        """Flush, then mark the run ``FINISHED``, ``FAILED`` or ``KILLED``. Later calls do nothing."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        if self._active:
            self._write()
            self._active = False
            self._call(f"marking the run {status}", lambda c, r: c.set_terminated(r, status))
            self.status = status
            self._push()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if issubclass(exc_type or type(None), (KeyboardInterrupt, Preempted)):  # requeued by the scheduler: resumed later
            self.finish("KILLED")
        elif exc_type is None or issubclass(exc_type, SystemExit) and exc.code in (0, None):
            self.finish("FINISHED")
        else:
            self.set_tags({ERROR_TAG: f"{exc_type.__name__}: {exc}"})
            self.finish("FAILED")
        return False


def _initial_tags(tags: dict[str, str]) -> dict[str, str]:
    """:func:`runtime_tags`, MLflow's context tags (user, source, git), then ``tags``."""
    from mlflow.tracking.context.registry import resolve_tags

    try:
        runtime = runtime_tags()
    except Exception as e:  # describing the machine must not stop a run
        log.warning("could not collect runtime tags: %s: %s", type(e).__name__, e)
        runtime = {"vsbench.runtime_tags_error": f"{type(e).__name__}: {e}"}
    return resolve_tags({**runtime, **tags})


@atexit.register
def _finish_open_trackers() -> None:
    for tracker in list(_live):
        if tracker._active and tracker._pid == os.getpid():
            log.warning("MLflow run %r (%s) was not finished; marking it KILLED", tracker.run_name, tracker.run_id)
            try:
                tracker.finish("KILLED")
            except Exception as e:
                log.warning("finishing run %r at exit failed: %s", tracker.run_name, e)


# --------------------------------------------------------------------------------------------
# Reading runs back


def _reading_client(uri: str):
    """A client of the store at ``uri`` for reading; None when a sqlite file does not exist (asking does not create it)."""
    path = sqlite_path(uri)
    return None if path is not None and not path.exists() else open_client(uri)


def end_abandoned_run(run_id: str, *, tracking_uri: str | None = None) -> bool:
    """Mark a run KILLED if it is still RUNNING (its process died and ``--force`` starts afresh); True if marked.
    ``run_id`` is a :attr:`Tracker.run_id`: for a server, a run of the outbox, whose copy is updated."""
    from mlflow.exceptions import MlflowException

    uri = absolute_sqlite(resolve_tracking_uri(tracking_uri), Path.cwd())
    local = uri if is_local(uri) else outbox_uri()
    client = _reading_client(local)
    try:
        if client is None or client.get_run(run_id).info.status != "RUNNING":
            return False
        client.set_terminated(run_id, "KILLED")
        if not is_local(uri):
            push_run(local, run_id, uri)
    except (MlflowException, ConnectionError) as e:
        log.warning("could not mark MLflow run %s KILLED everywhere (%s); it may stay RUNNING", run_id, e)
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
    or experiment that does not exist. For a server that does not answer: those of its runs in the
    working folder's outbox (with a warning), so a rerun does not train again what ended while it was down."""
    uri = server = absolute_sqlite(resolve_tracking_uri(tracking_uri), Path.cwd())
    if why := probe(uri):
        uri = outbox_uri()
        log.warning("MLflow tracking server %s is unreachable (%s); looking for finished runs of %r in the outbox %s", server, why,
                    experiment, uri)
    value = str(value)
    flt = "attributes.status = 'FINISHED'" + (f" and tags.`{tag}` = '{value}'" if _quotable(tag) and _quotable(value) else "")
    return [r.info.run_id for r in _search(_reading_client(uri), experiment, flt)
            if r.data.tags.get(tag) == value and (uri == server or r.data.tags.get(SERVER_TAG) == server)]


_FRAME_COLUMNS = ["run_id", "run_name", "status", "start_time", "end_time", "experiment_id", "parent_run_id"]


def runs_frame(experiment: str, *, tracking_uri: str | None = None, parent_run_id: str | None = None) -> pd.DataFrame:
    """The runs of ``experiment`` (or the children of ``parent_run_id``), oldest first: ``run_id, run_name,
    status, start_time, end_time`` (UTC), ``experiment_id, parent_run_id``, then ``params.*``, ``metrics.*``
    (last value) and ``tags.*``, each sorted. Deleted runs are left out."""
    import pandas as pd

    if parent_run_id is not None and not _quotable(parent_run_id):
        raise ValueError(f"not a run id: {parent_run_id!r}")
    flt = f"tags.`{PARENT_TAG}` = '{parent_run_id}'" if parent_run_id is not None else ""
    client = _reading_client(absolute_sqlite(resolve_tracking_uri(tracking_uri), Path.cwd()))
    rows = [{"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status, "start_time": r.info.start_time or None,
             "end_time": r.info.end_time or None, "experiment_id": r.info.experiment_id, "parent_run_id": r.data.tags.get(PARENT_TAG),
             **{f"params.{k}": v for k, v in r.data.params.items()}, **{f"metrics.{k}": v for k, v in r.data.metrics.items()},
             **{f"tags.{k}": v for k, v in r.data.tags.items()}} for r in _search(client, experiment, flt)]
    frame = pd.DataFrame(rows, columns=None if rows else _FRAME_COLUMNS)
    for column in ("start_time", "end_time"):
        frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True)
    order = {"params": 0, "metrics": 1, "tags": 2}
    return frame[_FRAME_COLUMNS + sorted(frame.columns.difference(_FRAME_COLUMNS), key=lambda c: (order[c.split(".", 1)[0]], c))]
