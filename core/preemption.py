"""Stopping a run cleanly when the scheduler asks: SLURM preemption and time limits.

SLURM warns a job before it preempts it or its time runs out by sending it a signal (submitit asks
for ``SIGUSR2`` 90 s ahead); submitit's handler then checkpoints the job's callable, requeues the
job and exits. A signal lands between any two bytecodes, possibly in the middle of an optimizer
step, so saving the training state from the handler could save half a step. Here the signal is
taken over instead (:func:`install`):

- inside :func:`deferred` (the training loop) the handler only records the request; the loop asks
  :func:`stop_requested` after every optimizer step, saves a checkpoint at that step boundary
  (mid-epoch included: :class:`harness.train.Pretraining` resumes it exactly) and calls
  :func:`hand_over`;
- anywhere else (evaluation, data checks) there is nothing to save, and the handler hands over at once.

:func:`hand_over` calls the scheduler's own handler (submitit's requeue) and turns its exit into
:class:`Preempted`, so the MLflow run of the interrupted segment ends ``KILLED`` rather than
``FAILED``; without a scheduler handler (a test, a plain process) it raises :class:`Preempted`.
Under DDP the ranks agree on the step to stop at (one ``all_reduce`` every :data:`CHECK_EVERY`
steps), so every rank stops at the same step and rank 0's checkpoint is consistent.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)
CHECK_EVERY = 10  # optimizer steps between the ranks' agreement on a stop request (DDP only)


class Preempted(SystemExit):
    """The scheduler stopped this process to requeue it; the run resumes from its last checkpoint."""


_state = {"requested": False, "deferring": 0, "signum": None}
_delegate: list[Callable | None] = [None]


def install(signum: int = signal.SIGUSR2) -> None:
    """Take over ``signum`` (main thread only): the handler in place so far (submitit's) becomes the
    one :func:`hand_over` calls."""
    previous = signal.getsignal(signum)
    _delegate[0] = previous if callable(previous) and previous is not _handler else _delegate[0]
    _state.update(requested=False, signum=signum)
    signal.signal(signum, _handler)


def uninstall() -> None:
    """Give the signal back to the handler :func:`install` found (tests, and jobs that end)."""
    if _state["signum"] is not None:
        signal.signal(_state["signum"], _delegate[0] or signal.SIG_DFL)
    _delegate[0] = None
    _state.update(requested=False, deferring=0, signum=None)


def installed() -> bool:
    return _state["signum"] is not None


def request_stop() -> None:
    """Ask the training loop to stop at its next step boundary (what the signal does; tests call it)."""
    _state["requested"] = True


def _handler(signum, frame) -> None:
    log.warning("signal %s received: the scheduler preempts this job or its time limit is near", signal.Signals(signum).name)
    if _state["deferring"]:
        request_stop()
    else:
        hand_over()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """While inside, a stop signal only sets the request that :func:`stop_requested` reads."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1


def stop_requested(step: int) -> bool:
    """Whether the loop should stop after optimizer step ``step``: this process's request alone, or,
    under DDP, any rank's request, agreed every :data:`CHECK_EVERY` steps (all ranks call this at
    every step, so they take part in the same collectives)."""
    if not installed() and not _state["requested"]:
        return False
    from core.distributed import is_distributed

    if not is_distributed():
        return _state["requested"]
    if step % CHECK_EVERY:
        return False
    import torch
    import torch.distributed as dist

    from core.distributed import init_distributed

    flag = torch.tensor([1.0 if _state["requested"] else 0.0], device=init_distributed().device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def hand_over() -> None:
    """Leave for the requeue: the scheduler's handler checkpoints the job's callable and requeues
    it (rank 0); its exit becomes :class:`Preempted`. Other ranks, and a process without a scheduler
    handler, raise :class:`Preempted` themselves."""
    from core.distributed import rank

    delegate, signum = _delegate[0], _state["signum"] or signal.SIGUSR2
    _state["requested"] = False
    if delegate is not None and rank() == 0:
        try:
            delegate(signum, None)
        except SystemExit as done:
            raise Preempted(done.code) from None
    raise Preempted(0 if rank() else 1)
