"""bertcli.parallel: results in task order for any number of workers, processes or threads, and bounded memory."""

from __future__ import annotations

import os
import signal

import pytest

from bertcli import parallel

_offset = 0


def _set_offset(value: int) -> None:
    global _offset
    _offset = value


def _shifted(task: int) -> tuple[int, int]:
    return task + _offset, os.getpid()


def _sigint_ignored(_: int) -> bool:
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


@pytest.mark.parametrize("workers, threads, caller", [(1, False, False), (2, False, False), (2, True, False),
                                                     (3, False, True)])
def test_results_come_in_task_order_and_each_phase_has_its_own_state(workers, threads, caller):
    with parallel.WorkerPool(workers, threads=threads, caller_works=caller) as pool:
        first = [r for r, _ in pool.map(_shifted, range(50), _set_offset, (100,))]
        second = [r for r, _ in pool.map(_shifted, range(50), _set_offset, (1000,))]  # a new phase, new state
    assert first == [100 + t for t in range(50)]
    assert second == [1000 + t for t in range(50)]


def test_processes_do_the_work_and_ignore_ctrl_c():
    with parallel.WorkerPool(2) as pool:
        pids = {pid for _, pid in pool.map(_shifted, range(20), _set_offset, (0,))}
        ignored = list(pool.map(_sigint_ignored, range(4), _set_offset, (0,)))
    assert os.getpid() not in pids
    assert all(ignored)  # the parent alone reports Ctrl-C


def test_tasks_are_read_lazily_a_bounded_number_ahead():
    pulled = []

    def tasks():
        for t in range(100):
            pulled.append(t)
            yield t

    with parallel.WorkerPool(2) as pool:
        results = pool.map(_shifted, tasks(), _set_offset, (0,))
        next(results)
        assert len(pulled) <= 2 * 2 + 1  # never the whole iterator: memory stays bounded
        assert [r for r, _ in results] == list(range(1, 100))


def test_a_working_caller_takes_its_share_and_spawns_one_process_fewer():
    with parallel.WorkerPool(3, caller_works=True) as pool:
        pids = [pid for _, pid in pool.map(_shifted, range(30), _set_offset, (0,))]
    # every third task ran in this process, the others in the two spawned workers
    assert [i for i, pid in enumerate(pids) if pid == os.getpid()] == list(range(2, 30, 3))
    assert len(set(pids) - {os.getpid()}) <= 2


def test_leaving_a_pool_whose_stop_hangs_does_not_hang(monkeypatch):
    """CPython's Pool.terminate can wait forever (python/cpython#78178): leaving the pool waits STOP_TIMEOUT_S for
    it, then goes on (to report the Ctrl-C and remove temporaries) while the stuck stopper stays behind."""
    import threading

    monkeypatch.setattr(parallel, "STOP_TIMEOUT_S", 0.05)
    pool = parallel.WorkerPool(2, threads=True)
    release = threading.Event()
    terminate = pool._pool.terminate
    pool._pool.terminate = lambda: (release.wait(), terminate())  # the hang, stood in for
    with pool:
        assert list(pool.map(abs, [-1, -2, -3])) == [1, 2, 3]
    stoppers = [t for t in threading.enumerate() if t.name == "stop-worker-pool"]
    assert stoppers and all(t.is_alive() for t in stoppers)  # left without waiting for it
    release.set()
    for t in stoppers:
        t.join()  # then it stops the pool as before
