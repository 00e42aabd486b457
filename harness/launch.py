"""A suite's jobs on a SLURM cluster, through submitit.

``vsbench run SUITE --launcher slurm`` submits every job of the suite (:class:`harness.suite.Job`: a
pretraining run with its evaluation, a reference row, an external checkpoint row) that is not done
or under way as one SLURM job array (``array_parallelism`` of them at once), and returns; ``--wait``
waits for them and prints the table. ``--launcher submitit-local`` takes the same path with
submitit's local executor: each job a process on this machine (tests, and trying a suite's cluster
settings before the queue).

Each job runs :func:`harness.suite.run_job`, the function a local suite calls for the same job, in
a process group that spans its GPUs and nodes: submitit's job environment names every task's rank,
the world size and the first node, which become torchrun's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) before the job starts; NCCL on GPUs, gloo on CPUs.

Preemption and time limits: SLURM warns a job ``signal_delay_s`` ahead (``SIGUSR2``); the training
loop stops at the next step boundary, saves (mid-epoch included) and the job requeues itself
(:mod:`core.preemption`); the requeued job resumes the checkpoint exactly, and continues its MLflow run.

Calling ``vsbench run`` again at any time is safe. The submitted jobs are recorded in
``<folder>/jobs.json`` (job name -> scheduler job id, per configuration of the suite), and the
scheduler is asked about each recorded job (``squeue``; for local jobs, whether the process lives):
a job pending, running or requeued is not submitted again; a job that ended with a result is done;
one that failed, was cancelled or died is reported with its log file and submitted again. A job also skips itself when its MLflow run finished before.

One store for all jobs: SQLite must not be written by many nodes at once. With a tracking server
(``tracking_uri = "http://..."`` in the suite, ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``) each job
writes its runs to an outbox of its own (``<folder>/stores/<job>/``) and copies them to the server;
without one, each job writes its own sqlite store there, and ``vsbench run`` and
``vsbench table --job-stores`` copy the runs of ended jobs into the main store
(:func:`core.tracking_sync.merge_stores`), one process writing it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Bound, ConfigError, check_bounds
from core.io import file_lock, pid_alive, write_json_atomic
from core.tracking_store import OUTBOX_DIR_VARIABLE

log = logging.getLogger(__name__)
LAUNCHERS = ("local", "slurm", "submitit-local")
JOBS_FILE = "jobs.json"
STORES = "stores"
ATTEMPTS = "attempts.json"


@dataclass
class SlurmSettings:
    """The ``[slurm]`` table of a suite (``--set slurm.KEY=VALUE`` on the command line): the resources
    of each job, i.e. of one row on one backbone and seed."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None  # e.g. "a100|h100"
    nodes: int = 1  # nodes per job
    gpus_per_node: int = 1  # one process per GPU; 0 for a CPU job (one process per node)
    cpus_per_task: int = 8  # data loader workers of each process need cores
    mem_gb: float | None = None  # per node; None: the partition's default
    time_min: int = 24 * 60  # time limit of one attempt; a job that reaches it saves and requeues itself
    signal_delay_s: int = 120  # how long before the limit SLURM warns the job (a step and a checkpoint must fit)
    max_requeues: int = 20  # attempts that may end at the time limit before the job is given up
    array_parallelism: int = 32  # jobs of the suite running at once
    setup: list[str] = field(default_factory=list)  # shell lines before the job, e.g. "source .venv/bin/activate"
    folder: str = ""  # logs, job records and per-job stores; default <pretrain.output_dir>/slurm
    poll_s: float = 60.0  # how often --wait asks the scheduler (squeue)

    def __post_init__(self) -> None:
        check_bounds(self, {"nodes": Bound(1, integer=True), "gpus_per_node": Bound(0, integer=True),
                            "cpus_per_task": Bound(1, integer=True), "time_min": Bound(1, integer=True),
                            "signal_delay_s": Bound(1, integer=True), "max_requeues": Bound(0, integer=True),
                            "array_parallelism": Bound(1, integer=True), "poll_s": Bound(0.1)})
        if self.signal_delay_s >= self.time_min * 60:
            raise ConfigError(f"slurm.signal_delay_s = {self.signal_delay_s} is not shorter than slurm.time_min = {self.time_min} "
                              "minutes: the warning would come before the job starts")

    @property
    def tasks_per_node(self) -> int:
        return max(1, self.gpus_per_node)


def configure_logging() -> None:
    """vsbench's log lines (INFO and up, with the logger's name) on stderr: the command line's, and a cluster job's."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def job_folder(settings: SlurmSettings, output_dir: str) -> Path:
    return Path(settings.folder or Path(output_dir) / "slurm").resolve()


def make_executor(launcher: str, settings: SlurmSettings, folder: Path):
    """submitit's executor for ``launcher`` with the job resources of ``settings`` (logs in ``folder/logs``)."""
    try:
        import submitit
    except ImportError as err:
        raise ConfigError(f"--launcher {launcher} submits through submitit, which is not installed: pip install -e '.[slurm]'") from err

    logs = folder / "logs" / "%j"
    if launcher == "slurm":
        executor = submitit.SlurmExecutor(folder=logs, max_num_timeout=settings.max_requeues)
        extra = {"gpus_per_node": settings.gpus_per_node} if settings.gpus_per_node else {}
        executor.update_parameters(
            partition=settings.partition, account=settings.account, qos=settings.qos, constraint=settings.constraint,
            nodes=settings.nodes, ntasks_per_node=settings.tasks_per_node, cpus_per_task=settings.cpus_per_task,
            mem=f"{int(settings.mem_gb * 1024)}M" if settings.mem_gb else None, time=settings.time_min,
            signal_delay_s=settings.signal_delay_s, array_parallelism=settings.array_parallelism, setup=list(settings.setup),
            job_name="vsbench", **extra)
        executor.parameters = {k: v for k, v in executor.parameters.items() if v is not None}
        return executor
    if launcher == "submitit-local":
        executor = submitit.LocalExecutor(folder=logs, max_num_timeout=settings.max_requeues)
        executor.update_parameters(timeout_min=settings.time_min, signal_delay_s=settings.signal_delay_s,
                                   tasks_per_node=settings.tasks_per_node, gpus_per_node=settings.gpus_per_node,
                                   setup=list(settings.setup))
        return executor
    raise ConfigError(f"launcher {launcher!r}: choose one of {', '.join(LAUNCHERS)}")


# ----------------------------------------------------------------------------- the job record


@dataclass
class JobBook:
    """``<folder>/jobs.json``: for every job of one configuration of a suite (``suite_hash``), the
    scheduler job last submitted for it. Written atomically under a lock."""

    folder: Path
    suite_hash: str

    @property
    def path(self) -> Path:
        return self.folder / JOBS_FILE

    def read(self) -> dict[str, dict]:
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return record.get(self.suite_hash, {}) if isinstance(record, dict) else {}

    def record(self, entries: dict[str, dict]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with file_lock(self.folder / (JOBS_FILE + ".lock"), timeout=60):
            try:
                record = json.loads(self.path.read_text(encoding="utf-8"))
            except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
                record = {}
            record.setdefault(self.suite_hash, {}).update(entries)
            write_json_atomic(self.path, record)


def _job(entry: dict):
    """The submitit job of a book entry."""
    import submitit

    cls = submitit.SlurmJob if entry["launcher"] == "slurm" else submitit.LocalJob
    return cls(folder=entry["logs"], job_id=entry["job_id"], tasks=list(range(entry.get("tasks", 1))))


def job_states(entries: dict[str, dict]) -> dict[str, str]:
    """``under way``, ``done`` or ``failed`` for each book entry (name -> entry): from the scheduler
    (SLURM: whether ``squeue`` lists the job, pending, running or requeued; a local job: whether its
    process lives), then, for a job that ended, from its result file."""
    live = _slurm_queue() if any(e["launcher"] == "slurm" for e in entries.values()) else {}
    return {name: _state(entry, live) for name, entry in entries.items()}


def _slurm_queue() -> dict[str, str]:
    """This user's jobs in the SLURM queue (array tasks one by one): job id -> state. ``squeue`` needs
    no accounting database, unlike ``sacct``."""
    import getpass
    import subprocess

    try:
        out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise ConfigError(f"cannot ask SLURM which jobs are queued (squeue: {err}); run this where SLURM's commands work") from err
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def _state(entry: dict, queue: dict[str, str]) -> str:
    if entry["job_id"] in queue if entry["launcher"] == "slurm" else _local_job_lives(int(entry["job_id"])):
        return "under way"
    job = _job(entry)
    if not job.paths.result_pickle.exists():
        return "failed"
    try:
        outcome = job.results()
    except Exception:  # the job raised: its traceback is in the result file and the log
        return "failed"
    return "done" if outcome else "failed"


def _local_job_lives(pid: int) -> bool:
    """Whether a local job's controller process lives (reaped first when this process started it)."""
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False  # it was our child, and it has just been reaped
    except ChildProcessError:  # not our child: started by an earlier `vsbench run`
        pass
    return pid_alive(pid)


def log_file(entry: dict) -> Path:
    """Where the job's error output is (task 0)."""
    return _job(entry).paths.stderr


# ----------------------------------------------------------------------------- inside the job


@dataclass(frozen=True)
class SuiteJob:
    """What a scheduler runs for one job of a suite (pickled by submitit): ``run(**arguments)``, i.e.
    :func:`harness.suite.job_entry` with the suite as resolved, the job, the parent run, where the job
    tracks and whether it starts afresh (``force``, first attempt only); ``store_dir`` is the job's
    own folder (its store or outbox, its attempts)."""

    run: Callable[..., list[dict]]
    arguments: dict
    name: str
    store_dir: str

    def __call__(self) -> list[dict]:
        from core import preemption

        configure_logging()
        distributed_environment()
        os.environ[OUTBOX_DIR_VARIABLE] = self.store_dir  # a server's outbox of its own, never one shared by jobs
        self._record_attempt()
        preemption.install()
        return self.run(**self.arguments)

    def _record_attempt(self) -> None:
        """``<store_dir>/attempts.json``: where and when each attempt of the job ran (rank 0), so a
        requeued job's history is one file away."""
        import socket

        import submitit

        env = submitit.JobEnvironment()
        if env.global_rank:
            return
        folder = Path(self.store_dir)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            attempts = json.loads((folder / ATTEMPTS).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            attempts = []
        attempts.append({"job_id": env.job_id, "host": socket.gethostname(), "pid": os.getpid(), "tasks": env.num_tasks,
                         "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        write_json_atomic(folder / ATTEMPTS, attempts)

    def checkpoint(self):
        """submitit calls this when the job is preempted or reaches its time limit, after the
        training loop saved: the requeued job is this one, resuming (never starting afresh)."""
        import submitit

        return submitit.helpers.DelayedSubmission(dataclasses.replace(self, arguments={**self.arguments, "force": False}))


def distributed_environment() -> None:
    """torchrun's variables from submitit's job environment, when the job has more than one task."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks <= 1:
        return
    first = "127.0.0.1" if env.num_nodes == 1 else env.hostnames[0]
    port = 20000 + int(hashlib.sha1(env.job_id.encode()).hexdigest(), 16) % 20000  # one per job, same on every task
    os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
                      LOCAL_WORLD_SIZE=str(env.num_tasks // env.num_nodes), MASTER_ADDR=first, MASTER_PORT=str(port))


# ----------------------------------------------------------------------------- the submitting side


def submit(launcher: str, settings: SlurmSettings, folder: Path, suite_hash: str, pending: list[SuiteJob]) -> dict[str, dict]:
    """Submit ``pending`` as one job array; records and returns their book entries."""
    executor = make_executor(launcher, settings, folder)
    with executor.batch():
        handles = [executor.submit(job) for job in pending]
    entries = {job.name: {"job_id": str(handle.job_id), "launcher": launcher, "logs": str(folder / "logs" / "%j"),
                              "tasks": settings.tasks_per_node * (settings.nodes if launcher == "slurm" else 1),
                              "submitted": time.strftime("%Y-%m-%d %H:%M:%S")}
               for job, handle in zip(pending, handles)}
    JobBook(folder, suite_hash).record(entries)
    return entries


def job_stores(folder: Path) -> list[Path]:
    """The per-job sqlite stores under ``folder`` (``stores/<job>/mlflow.db``)."""
    return sorted((folder / STORES).glob("*/mlflow.db"))


def wait(book: JobBook, names: list[str], poll_s: float) -> dict[str, str]:
    """Block until none of the jobs ``names`` is under way, asking every ``poll_s`` seconds; returns their final states."""
    while True:
        entries = book.read()
        states = job_states({name: entries[name] for name in names if name in entries})
        if all(s != "under way" for s in states.values()):
            return states
        time.sleep(poll_s)
