"""Worker processes for the local executor: one per core, each holding some of the run's shards.

In: the plan, the shard layout ({population: [(start, stop)]}), the shards' options (as Shard takes
them) and a number of workers. Out: `Workers.call(population, method, args)` -> one result per
shard, in shard order, exactly as the in-process executor returns them (every worker runs the same
Shard code); `sample(population, indices)` -> the shards' `load()`, answered by a second thread of
each worker while its shards work; `close()`.

Why processes: a step's client work (rendering prompts, parsing replies, numpy glue, the HTTP
loop) holds the GIL, so one process is one core however many shards it holds. Why not always Ray:
a laptop run does not need Ray's daemons (about 0.25 ms of CPU a call on the LLM path) or its
start-up; `--executor ray` remains the way to several machines.

Shard i of a population lives in worker i % workers, so with one shard per worker and population
(the default layout) every worker has a share of every population and all of them work on every
step. The in_flight pools and the budget ledger every shard draws on live in one manager process
(multiprocessing.managers, see shared.py), as on Ray they live in one actor each.

A worker that dies (killed, out of memory) fails the run with ShardDied; the run stays resumable
from its last checkpoint (a local run has no shard restarts). Ctrl-C is the driver's: workers
ignore SIGINT, and the driver ends the run "stopped" and then stops them.
"""
from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import sys
import threading
from multiprocessing.connection import wait

GRACE = 5.0  # seconds a worker has to close its shards (flush its cache) before it is killed


def cores() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Workers:
    def __init__(self, plan, ranges: dict, count: int, options_for):
        """`options_for(population)` -> the options of that population's shards."""
        self.ranges = ranges
        self.count = count
        self.home = {pop: [i % count for i in range(len(rs))] for pop, rs in ranges.items()}
        context = multiprocessing.get_context("spawn")  # not fork: the driver may hold threads
        self.procs, self.work, self.monitor, self.locks = [], [], [], []
        for w in range(count):
            specs = [(pop, i, a, b, len(rs), options_for(pop)) for pop, rs in sorted(ranges.items())
                     for i, (a, b) in enumerate(rs) if self.home[pop][i] == w]
            work, work_child = context.Pipe()
            monitor, monitor_child = context.Pipe()
            proc = context.Process(target=serve, args=(work_child, monitor_child, plan, specs, list(sys.path)),
                                   name=f"populace-worker-{w}", daemon=True)
            proc.start()
            work_child.close()
            monitor_child.close()
            self.procs.append(proc)
            self.work.append(work)
            self.monitor.append(monitor)
            self.locks.append(threading.Lock())
        # Every worker builds its shards at once; the first error (a missing key, a bad policy) is raised.
        errors = [self._receive(w, "start") for w in range(count)]
        for error in errors:
            if error is not None:
                self.close()
                raise error

    def call(self, population: str, method: str, args: tuple, on_done=None, on_wait=None,
             sample_every: float = 1.0) -> list:
        home = self.home[population]
        results: list = [None] * len(home)
        outstanding = {}  # worker -> how many of its shards have not answered
        for w in sorted(set(home)):
            indices = [i for i, h in enumerate(home) if h == w]
            self._send(w, ("call", population, indices, method, args))
            outstanding[w] = len(indices)
        failures = []
        while outstanding:
            ready = wait([self.work[w] for w in outstanding], timeout=sample_every if on_wait else None)
            if not ready:
                on_wait(sorted(i for i, h in enumerate(home) if h in outstanding and results[i] is None))
                continue
            for conn in ready:
                w = self.work.index(conn)
                kind, index, value = self._receive(w, method)
                outstanding[w] -= 1
                if not outstanding[w]:
                    del outstanding[w]
                if kind == "ok":
                    results[index] = value
                    if on_done:
                        on_done(index, value)
                elif kind == "error":
                    failures.append((index, value))
        if failures:  # the lowest shard's error, as the in-process executor (shard by shard) raises it
            raise min(failures, key=lambda f: f[0])[1]
        return results

    def sample(self, population: str, indices: list) -> list:
        out = []
        for w in sorted({self.home[population][i] for i in indices}):
            mine = [i for i in indices if self.home[population][i] == w]
            with self.locks[w]:
                try:
                    self.monitor[w].send(("load", population, mine))
                    if self.monitor[w].poll(1.0):
                        out.extend(self.monitor[w].recv())
                except (OSError, EOFError):
                    continue  # a dead worker: the next call says so
        return out

    def _send(self, w: int, message) -> None:
        try:
            self.work[w].send(message)
        except (OSError, EOFError):
            raise self._died(w, message[3] if len(message) > 3 else message[0]) from None

    def _receive(self, w: int, doing: str):
        try:
            return self.work[w].recv()
        except (OSError, EOFError):
            raise self._died(w, doing) from None

    def _died(self, w: int, doing: str) -> Exception:
        from .executors import ShardDied

        self.procs[w].join(1.0)
        code = self.procs[w].exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        held = ", ".join(f"{pop} {i}" for pop, homes in sorted(self.home.items()) for i, h in enumerate(homes) if h == w)
        return ShardDied(f"worker process {w} of the local executor (shards: {held}) {how} during `{doing}` (out "
                         "of memory, a crash in a policy or a library?); the run stops, and `populace resume` "
                         "continues from the last checkpoint once the cause is fixed")

    def close(self) -> None:
        for w, proc in enumerate(self.procs):
            if proc.is_alive():
                try:
                    self.work[w].send(("close",))
                except (OSError, EOFError):
                    pass
        for proc in self.procs:
            proc.join(GRACE)
            if proc.is_alive():  # busy in a call the driver gave up on (Ctrl-C, an error elsewhere)
                proc.kill()
                proc.join()
        for conn in (*self.work, *self.monitor):
            conn.close()
        self.procs = []


def serve(work, monitor, plan, specs: list, path: list) -> None:
    """A worker's life: build its shards, answer calls until told to close (runs in the child)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the driver, which stops us
    sys.path[:] = path
    from .shard import Shard

    shards = {}
    try:
        for pop, i, a, b, n, options in specs:
            shards[(pop, i)] = Shard(plan, pop, i, a, b, n, options)
    except Exception as e:  # noqa: BLE001 - the driver raises it as the run's start-up error
        work.send(_portable(e))
        return
    work.send(None)
    threading.Thread(target=_answer_monitor, args=(monitor, shards), name="populace-monitor", daemon=True).start()
    try:
        while True:
            message = work.recv()
            if message[0] == "close":
                break
            _, pop, indices, method, args = message
            failed = False
            for i in indices:
                if failed:  # as in one process: the shards after a failing one are not called
                    work.send(("skipped", i, None))
                    continue
                try:
                    work.send(("ok", i, getattr(shards[(pop, i)], method)(*args)))
                except Exception as e:  # noqa: BLE001 - sent to the driver, which fails the run with it
                    failed = True
                    work.send(("error", i, _portable(e)))
    except (EOFError, OSError):
        pass  # the driver is gone
    finally:
        for shard in shards.values():
            shard.close()


def _answer_monitor(conn, shards: dict) -> None:
    try:
        while True:
            _, pop, indices = conn.recv()
            conn.send([shards[(pop, i)].load() for i in indices])
    except (EOFError, OSError):
        pass


def _portable(error: Exception) -> Exception:
    """`error` if it survives pickling (the driver re-raises it as it is), else a RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - an exception class whose constructor takes other arguments
        return RuntimeError(f"{type(error).__name__}: {error}")
