"""Where a stage's tasks run (the `executor` key): this machine's WorkerPool, or the tasks of a Ray cluster.

A stage says what to map (a function over tasks, with a per-worker setup); the executor decides where each call
runs. Both executors return the results in task order, with a bounded number of tasks in flight, so a stage writes
the same bytes whichever one ran its tasks.
"""

from __future__ import annotations

import collections
import logging
import os
import uuid
from typing import Any, Callable, Iterable, Iterator, Union

from bertcli.errors import ConfigError, ExecutorError, one_line
from bertcli.parallel import WorkerPool, call_in_phase

RAY_EXTRA = "pip install 'bertcli[ray]'"

# The environment of every Ray task's worker process. One Rust (rayon) thread: a task holds one CPU. No progress
# bars: a pairs shard job's own bars would interleave on the driver's terminal, where one bar counts all tasks.
# Environment variables of the worker rather than os.environ in the task: tqdm reads TQDM_* when it is imported,
# which happens while the task's arguments are unpickled, before the task runs.
TASK_ENV = {"RAYON_NUM_THREADS": "1", "TQDM_DISABLE": "1"}

# Failures worth another attempt on another worker: Ray retries a task whose worker or node died by itself
# (max_retries); of the task's own exceptions only an OSError (a shared filesystem that hiccuped) may pass on a
# retry. A BertcliError (bad input or config) would fail the same way every time.
RETRIED_EXCEPTIONS = [OSError]


class RayExecutor:
    """Tasks on a Ray cluster: a local instance of num_workers CPUs (address None), or a running cluster (`auto`,
    `ray://host:port`). A process that has already called ray.init (a notebook, a test) is used as it is.

    map() keeps 2 × the cluster's CPUs tasks in flight and yields their results in task order; each task holds one
    CPU. Workers import bertcli themselves: the package must be installed on every node (see docs/distributed.md).
    """

    def __init__(self, num_workers: int, address: str | None = None, max_retries: int = 3):
        try:
            import ray  # optional (the bertcli[ray] extra) and slow to import (~1 s): only for executor ray
        except ImportError:
            raise ConfigError(f"key 'executor': ray is not installed; install the extra: {RAY_EXTRA}") from None
        self._ray = ray
        self.max_retries = max_retries
        self._owns_connection = not ray.is_initialized()
        if self._owns_connection:
            _connect(ray, address or os.environ.get("RAY_ADDRESS") or None, max(1, num_workers))
        self.num_workers = max(1, int(ray.cluster_resources().get("CPU", num_workers)))
        self._remote = ray.remote(call_in_phase).options(
            num_cpus=1,
            max_retries=max_retries,
            retry_exceptions=RETRIED_EXCEPTIONS,
            runtime_env={"env_vars": TASK_ENV},
        )

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._owns_connection:
            self._ray.shutdown()  # stops a local instance; leaves a joined cluster running

    def map(
        self, func: Callable, tasks: Iterable, initializer: Callable | None = None, initargs: tuple = ()
    ) -> Iterator:
        """func(task) for each task as a Ray task, results in order; initializer(*initargs), if given, sets up each
        worker process once per map (see parallel.call_in_phase)."""
        # Unique per map, not a counter: a Ray worker process outlives this map and this executor (tests and
        # notebooks run several stages on one instance), and must not take another map's state for its own.
        phase = uuid.uuid4().hex
        pending: collections.deque = collections.deque()
        try:
            for task in tasks:
                pending.append(self._remote.remote(phase, initializer, initargs, func, task))
                if len(pending) >= 2 * self.num_workers:
                    yield self._result(pending.popleft())
            while pending:
                yield self._result(pending.popleft())
        finally:
            for ref in pending:  # a failed or abandoned map stops its other tasks instead of leaving them running
                self._ray.cancel(ref)

    def _result(self, ref: Any) -> Any:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            # The task's own exception (after its retries, for an OSError): raised as the local executor would
            # raise it, so a BertcliError still becomes one line naming the file; Ray's text, with the remote
            # traceback, stays chained for BERTCLI_DEBUG.
            raise exc.cause from exc
        except ray.exceptions.RayError as exc:
            raise ExecutorError(
                f"a Ray task failed, retried up to {self.max_retries} times "
                f"({type(exc).__name__}: {one_line(exc)[:300]})",
                hint="a worker or node died (out of memory?): see the Ray logs (`ray logs`, or "
                "/tmp/ray/session_latest/logs on the node); raise max_retries for a flaky cluster",
            ) from exc


def _connect(ray: Any, address: str | None, num_workers: int) -> None:
    # Ray's INFO lines (where its logs and dashboard are) on every start would bury the stage's own output.
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if address is None:
        kwargs.update(num_cpus=num_workers, include_dashboard=False)
    else:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at '{address}'" if address else "a local Ray instance"
        raise ConfigError(
            f"key 'ray_address': could not start or reach {where}: {one_line(exc)[:300]}",
            hint="start the cluster first (`ray start --head` on its first node), or leave ray_address unset for "
            "a local instance",
        ) from None


Executor = Union[WorkerPool, RayExecutor]


def open_executor(
    cfg: Any, threads: bool = False, num_workers: int | None = None, caller_works: bool = False
) -> Executor:
    """The executor a stage's config asks for: `executor` (local or ray), `num_workers`, and for ray `ray_address`
    and `max_retries`. threads: the local executor uses threads (numpy work that releases the GIL).
    num_workers overrides the config's (word counting uses one worker for a small corpus); caller_works: the local
    executor counts the calling process as one of its workers (WorkerPool)."""
    workers = cfg.num_workers if num_workers is None else num_workers
    if getattr(cfg, "executor", "local") == "ray":
        return RayExecutor(workers, cfg.ray_address, cfg.max_retries)
    return WorkerPool(workers, threads=threads, caller_works=caller_works)
