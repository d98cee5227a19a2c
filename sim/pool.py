"""Worker processes for simulation jobs (collection, evaluation), and the signal handling around them.

Jobs are pure functions of their arguments, so when a worker dies every job in flight is simply run
again in a fresh pool. Workers ignore SIGINT (the parent handles Ctrl-C) and render single-threaded.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any, TypeVar

from mt_policy.errors import MtPolicyError

MAX_POOL_RESTARTS = 3
Job = TypeVar("Job")


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    # Workers are the unit of parallelism: Mesa's software rasteriser would otherwise start a thread
    # per core in every worker and oversubscribe the machine (2 workers x 2 threads on 2 cores).
    os.environ.setdefault("LP_NUM_THREADS", "1")


def new_pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: the parent runs zarr's I/O threads, and forking a threaded process can deadlock.
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_worker_init)


def shutdown_pool(pool: ProcessPoolExecutor) -> None:
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:  # do not wait for jobs nobody will record
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt():
    """Inside the block SIGTERM raises KeyboardInterrupt, so one handler stops work cleanly for both."""
    import threading

    if threading.current_thread() is not threading.main_thread():  # signals can only be set there
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_jobs(fn: Callable[..., Any], next_job: Callable[[], Job | None], on_result: Callable[[Job, Any], None],
             workers: int, warnings: list[str], what: str = "worker") -> None:
    """Run `fn(*job)` for each job `next_job()` yields (until None) in `workers` processes.

    At most 2 jobs per worker are in flight; results reach `on_result` in completion order. A dead
    worker breaks the whole pool: its jobs in flight go back to the queue and a new pool starts
    (after MAX_POOL_RESTARTS restarts in a row without a result, give up).
    """
    pending: dict[Future, Job] = {}
    retry: deque[Job] = deque()
    restarts = 0
    pool = new_pool(workers)
    try:
        while True:
            broken = False
            while len(pending) < 2 * workers and not broken:
                job = retry.popleft() if retry else next_job()
                if job is None:
                    break
                try:
                    pending[pool.submit(fn, *job)] = job
                except BrokenProcessPool:  # a worker died between two submits
                    retry.appendleft(job)
                    broken = True
            if not pending and not retry:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED) if pending else (set(), set())
            for future in done:
                job = pending.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    retry.append(job)
                    broken = True
                    continue
                restarts = 0
                on_result(job, result)
            if broken:
                restarts += 1
                if restarts > MAX_POOL_RESTARTS:
                    raise MtPolicyError(f"{what} processes keep dying ({restarts} pool restarts in a row)")
                retry.extend(pending.values())
                pending.clear()
                warnings.append(f"a {what} process died; restarted the pool and retried {len(retry)} jobs")
                shutdown_pool(pool)
                pool = new_pool(workers)
    finally:
        shutdown_pool(pool)
