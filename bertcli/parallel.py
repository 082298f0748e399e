"""The one ordered, bounded worker pool (processes or threads) that pairs, mask and word counting share."""

from __future__ import annotations

import collections
import itertools
import multiprocessing as mp
import os
import signal
import threading
from typing import Any, Callable, Hashable, Iterable, Iterator

# How long leaving a WorkerPool waits for its pool to stop (see WorkerPool.__exit__); it takes milliseconds when it
# does not hang.
STOP_TIMEOUT_S = 5.0
# The phase whose initializer last ran in this worker process: a pool outlives the phases of a stage, and each
# phase (tokenizing, building, …) sets up its own worker state once per process.
_phase_in_worker: Hashable | None = None


def _start_worker() -> None:
    # Ctrl-C reaches every process of the group: the parent alone reports it, workers just stop with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The processes are the parallelism: one Rust (rayon) thread per worker instead of a pool per worker that
    # would oversubscribe the cores. Read when tokenizers first runs in parallel, i.e. after this.
    os.environ["RAYON_NUM_THREADS"] = "1"


def call_in_phase(phase: Hashable, initializer: Callable | None, initargs: tuple, func: Callable, task: Any) -> Any:
    """Worker side of a map (WorkerPool's, or executors.RayExecutor's): (re)initialise when a new phase starts, then
    run the task."""
    global _phase_in_worker
    if _phase_in_worker != phase:
        if initializer is not None:
            initializer(*initargs)
        _phase_in_worker = phase
    return func(task)


class _Done:
    """A result the caller computed itself, queued in order among the workers' pending ones."""

    def __init__(self, value: Any):
        self.value = value

    def get(self) -> Any:
        return self.value


class WorkerPool:
    """num_workers spawned processes (or threads), kept for every phase of a stage: starting Python costs seconds
    under load.

    map() returns results in task order with at most 2·num_workers tasks in flight, so memory stays bounded
    (Pool.imap would read the whole task iterator ahead of the workers). One worker means no extra process: the
    work runs in the caller, with the same initializer, so results never depend on the worker count.

    caller_works: the caller is one of the num_workers (it runs every num_workers-th task itself, between feeding
    the others) and one process fewer is spawned. Worth it where the caller would otherwise only wait, and each
    spawned process costs its own interpreter and imports (about 27 MB for word counting).
    """

    def __init__(self, num_workers: int, threads: bool = False, caller_works: bool = False):
        self.num_workers = max(1, num_workers)
        self.threads = threads and self.num_workers > 1
        self.caller_works = caller_works and not self.threads and self.num_workers > 1
        if self.num_workers == 1:
            self._pool = None
        elif self.threads:
            # For numpy-bound work (masking): numpy releases the GIL, and threads cost nothing to start.
            from multiprocessing.pool import ThreadPool

            self._pool = ThreadPool(self.num_workers)
        else:
            # spawn, not fork: forking after tokenizers' Rust threads have started can deadlock.
            spawned = self.num_workers - 1 if self.caller_works else self.num_workers
            self._pool = mp.get_context("spawn").Pool(spawned, initializer=_start_worker)
        self._phases = itertools.count(1)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is None:
            return
        # CPython's Pool.terminate can wait forever for its task thread when the pool is stopped while that thread
        # feeds the workers (python/cpython#78178, #73945): about one Ctrl-C in seven during `bert pairs` hung there,
        # after the workers had been stopped. So the pool is stopped from a daemon thread that this process waits
        # for a while, not for ever; a stuck one ends with the process.
        stopper = threading.Thread(target=self._stop_pool, name="stop-worker-pool", daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT_S)

    def _stop_pool(self) -> None:
        self._pool.terminate()
        self._pool.join()

    def map(
        self, func: Callable, tasks: Iterable, initializer: Callable | None = None, initargs: tuple = ()
    ) -> Iterator:
        """func(task) for each task, in order; initializer(*initargs), if given, sets up each worker's state first."""
        global _phase_in_worker
        if (self._pool is None or self.threads or self.caller_works) and initializer is not None:
            # in this process (or its threads): one shared state, set up once here rather than racing in threads
            initializer(*initargs)
            # This process may also be a Ray worker (a pairs shard job runs here): the state set up now belongs to
            # no phase of an outer map, which must set up its own again.
            _phase_in_worker = None
        if self._pool is None:
            for task in tasks:
                yield func(task)
            return
        phase = next(self._phases)
        pending: collections.deque = collections.deque()
        for i, task in enumerate(tasks):
            if self.threads:
                pending.append(self._pool.apply_async(func, (task,)))
            elif self.caller_works and i % self.num_workers == self.num_workers - 1:
                pending.append(_Done(func(task)))  # the others are busy with the tasks queued before it
            else:
                pending.append(self._pool.apply_async(call_in_phase, (phase, initializer, initargs, func, task)))
            if len(pending) >= 2 * self.num_workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
