"""Executors: where shards live. `local` keeps them in this process or in one worker process per
core (workers.py); `ray` puts each in an actor.

In: the typed plan and a shard layout (population -> [(start, stop)]). Out: an object with
`call(population, method, *args) -> [result per shard]` and `call_all(method, *args)`; both
executors run the same Shard code, so results are identical. Ray handles never leave this module.
"""
from __future__ import annotations

import math
import os
import threading
import time

from populace.runtime.models.budget import make_ledger
from populace.runtime.models.leases import Remote, make_pools

from .shard import Shard

MAX_RESTARTS = 3  # a shard that keeps dying fails the run after this many restarts (it stays resumable)


class ShardDied(RuntimeError):
    """A shard's process kept dying: the run fails with this message (and stays resumable)."""
MUTATING = ("ask", "ask_in_order", "set_state", "tell", "broadcast")  # calls that change agents: replayed after a restart
SHARD_CPUS = 0.001  # what a shard actor asks of Ray: not 0, or Ray would not spread shards over nodes
SAMPLE_EVERY = 1.0  # seconds between `on_wait` samples while a call runs (the monitor's calls in flight)


def layout(plan, shards: int | None, default_shards: int) -> dict[str, list[tuple[int, int]]]:
    """Split each population into contiguous ranges: `shards` of them, or enough for the size limit."""
    out = {}
    for name, pop in sorted(plan.populations.items()):
        count = shards or default_shards
        count = max(count, math.ceil(pop.size / pop.max_agents_per_shard))
        count = max(1, min(count, pop.size))
        bounds = [round(i * pop.size / count) for i in range(count + 1)]
        out[name] = [(bounds[i], bounds[i + 1]) for i in range(count)]
    return out


def agreed_persona_texts(plan, ranges: dict, options: dict | None) -> tuple[dict, dict]:
    """({population: texts every shard of it uses}, {model: calls and tokens spent here}).

    Only for a population split over several shards whose persona writes `reuse per` texts: the
    texts are written here, once per combination for the whole population (personas.agreed_texts),
    before the shards start, and the shards take them instead of writing their own.
    """
    from populace.runtime.personas import sampling as personas
    from populace.runtime.models.base import make_model
    from .shard import write_texts

    known, usage, models = {}, {}, {}

    def write(name: str, prompts: list[str]) -> list[str]:
        if name not in models:
            models[name] = make_model(plan.models[name], 0, 1, options)
        return write_texts(models[name], name, prompts, plan.seed, usage)

    try:
        for pop_name, rs in sorted(ranges.items()):
            pop = plan.populations[pop_name]
            if len(rs) > 1 and pop.persona:
                texts = personas.agreed_texts(plan.personas[pop.persona], pop.size, plan.seed, write)
                if texts:
                    known[pop_name] = texts
    finally:
        for model in models.values():
            cache = getattr(model, "cache", None)
            if cache is not None:
                cache.flush()  # the replies are the shards' (and a resume's) too
            if hasattr(model, "close"):
                model.close()
    return known, usage


def _with_texts(options: dict | None, known: dict, pop: str) -> dict | None:
    return dict(options or {}, persona_texts=known[pop]) if pop in known else options


AUTO_AGENTS = 20_000  # from this many agents in all, `workers` left to us means one process per core


def local_workers(plan, workers: int | None, shards: int | None) -> int:
    """Worker processes for the local executor: `workers` as given, else (None) one per core once
    the run has AUTO_AGENTS agents (below that, start-up costs more than a second core saves), and
    none inside a daemon process (a sweep's pool, which already runs one run per core).
    0 means the shards run in this process."""
    import multiprocessing

    from .workers import cores

    if workers is not None:
        return max(0, workers)
    if multiprocessing.current_process().daemon or shards == 1:
        return 0
    agents = sum(pop.size for pop in plan.populations.values())
    return cores() if cores() > 1 and agents >= AUTO_AGENTS else 0


class LocalExecutor:
    """Shards in this process (workers = 0), one after another; or in worker processes
    (workers.py), the shards of different workers at the same time."""
    name = "local"

    def __init__(self, plan, shards: int | None, options: dict | None = None, ranges=None,
                 workers: int | None = None):
        chosen = local_workers(plan, workers, shards)
        self.ranges = ranges = ranges or layout(plan, shards, max(1, chosen))
        # No more workers than the largest population has shards: an empty worker would only start up.
        chosen = min(chosen, max((len(rs) for rs in ranges.values()), default=1))
        self.workers = chosen if workers is not None or chosen > 1 else 0
        self.manager, self.processes = None, None
        if self.workers:
            from populace.runtime.models.shared import share

            self.manager, self.pools, self.ledger = share(plan, (options or {}).get("budget"))
        else:
            self.pools = make_pools(plan)  # one in_flight pool per LLM model, shared by every shard
            self.ledger = make_ledger((options or {}).get("budget"))  # the run's dollars, drawn on by every shard
        options = dict(options or {}, permits=self.pools, budget_ledger=self.ledger)
        try:
            known, self.write_usage = agreed_persona_texts(plan, ranges, options)
            if self.workers:
                from .workers import Workers

                self.processes = Workers(plan, ranges, self.workers, lambda pop: _with_texts(options, known, pop))
                self.shards = {}
            else:
                self.shards = {pop: [Shard(plan, pop, i, a, b, len(rs), _with_texts(options, known, pop))
                                     for i, (a, b) in enumerate(rs)] for pop, rs in ranges.items()}
        except BaseException:
            self._stop_manager()
            raise

    def call(self, population: str, method: str, *args, on_done=None, on_wait=None) -> list:
        """Call `method` on every shard of `population`; results in shard order.
        `on_done(shard_index, result)` is told as each shard finishes (for progress);
        `on_wait(unfinished shard indices)` every SAMPLE_EVERY seconds until all have."""
        if self.processes is not None:
            return self.processes.call(population, method, args, on_done, on_wait, SAMPLE_EVERY)
        results = []
        ticking = threading.Event()
        if on_wait:
            # The shards run in this thread, one after another: a ticker thread samples them.
            def tick():
                while not ticking.wait(SAMPLE_EVERY):
                    on_wait(list(range(len(results), len(self.shards[population]))))
            ticker = threading.Thread(target=tick, name="populace-sample", daemon=True)
            ticker.start()
        try:
            for i, s in enumerate(self.shards[population]):
                result = getattr(s, method)(*args)
                results.append(result)
                if on_done:
                    on_done(i, result)
        finally:
            ticking.set()
            if on_wait:
                ticker.join()  # no sample may land after the call has returned
        return results

    def sample(self, population: str, indices: list) -> list:
        """`load()` of the given shards (read from another thread while they work)."""
        if self.processes is not None:
            return self.processes.sample(population, indices)
        return [self.shards[population][i].load() for i in indices]

    def checkpoint_done(self) -> None:
        pass

    def budget_spent(self) -> float:
        return budget_spent(self.ledger)

    restarts: list = []

    def close(self) -> None:
        for shards in self.shards.values():
            for shard in shards:
                shard.close()
        self.shards = {}
        if self.processes is not None:
            self.processes.close()
            self.processes = None
        self._stop_manager()

    def _stop_manager(self) -> None:
        if self.manager is not None:
            self.manager.shutdown()
            self.manager = None


class RayExecutor:
    name = "ray"

    def __init__(self, plan, shards: int | None, address: str | None = None,
                 options: dict | None = None, ranges=None):
        import ray

        self.ray = ray
        self.started_ray = False
        if not ray.is_initialized():
            # Token auth would write ~/.ray/auth_token; a local, loopback-only Ray does not need it.
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            kwargs = {"address": address} if address else {"include_dashboard": False}
            ray.init(log_to_driver=False, logging_level="ERROR", **kwargs)
            self.started_ray = True
        self.ranges = ranges = ranges or layout(plan, shards, int(ray.cluster_resources().get("CPU", 1)))
        # One in_flight pool per LLM model for the whole cluster (a tiny actor each): shards borrow
        # and return permits, so a shard that finishes early leaves no share of the limit idle.
        self.pools = make_pools(plan, ray)
        self.ledger = make_ledger((options or {}).get("budget"), ray)
        options = dict(options or {}, permits=self.pools, budget_ledger=self.ledger)
        # A token CPU share (SHARD_CPUS): we size the shard pool ourselves; actors asking 1 CPU each
        # would queue forever once there are more shards than CPUs. A shard whose process dies is
        # restarted by Ray and reloads the latest checkpoint; we (not Ray) then replay the agent-changing calls made
        # since that checkpoint and send the failed call again, so no step is lost or done twice.
        restarts = MAX_RESTARTS if (options or {}).get("restartable") else 0
        self.restartable = bool(restarts)
        # The "monitor" group: `load` answers on its own thread while the shard is busy in `ask`.
        # SPREAD puts shards on the cluster's nodes in turn (and a lost node's shards on the nodes
        # left when Ray restarts them); Ray spreads only actors that ask for some resource.
        remote = ray.remote(num_cpus=SHARD_CPUS, max_restarts=restarts, max_task_retries=0,
                            scheduling_strategy="SPREAD", concurrency_groups={"monitor": 1})(Shard)
        self.journal: dict[str, list] = {pop: [] for pop in ranges}
        self.restarts: list[dict] = []
        # The plan goes inline with each actor's creation (it is a few KB: plans do not grow with
        # agents), so Ray keeps it in the actor's spec and a restarted actor gets it again.
        known, self.write_usage = agreed_persona_texts(plan, ranges, options)
        self.actors = {pop: [remote.remote(plan, pop, i, a, b, len(rs), _with_texts(options, known, pop))
                             for i, (a, b) in enumerate(rs)] for pop, rs in ranges.items()}
        try:
            ray.get([a.ready.remote() for actors in self.actors.values() for a in actors])
        except Exception:
            self.close()
            raise

    def call(self, population: str, method: str, *args, on_done=None, on_wait=None) -> list:
        actors = self.actors[population]
        if len(actors) > 1 and args:
            # Put each argument in the object store once: a step's context can carry a gathered
            # column (8 MB for a million floats) that every shard reads.
            args = tuple(self.ray.put(a) for a in args)
        if method in MUTATING and self.restartable:
            # Only a restartable shard is ever replayed; otherwise the journal would keep every
            # step's arguments (gathered columns included) alive until the run ends.
            self.journal[population].append((method, args))
        refs = [getattr(a, method).remote(*args) for a in actors]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        pending = list(refs)
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=1, timeout=SAMPLE_EVERY if on_wait else None)
            if not ready:
                on_wait(sorted(index[ref] for ref in pending))
                continue
            i = index[ready[0]]
            try:
                results[i] = self.ray.get(ready[0])
            except self._died:
                results[i] = self._recover(population, i, method, args)
            if on_done:
                on_done(i, results[i])
        return results

    def sample(self, population: str, indices: list) -> list:
        """`load()` of the given shards, answered beside their running call; a shard that does
        not answer within a second (dead, or restarting) is left out."""
        refs = [self.actors[population][i].load.options(concurrency_group="monitor").remote() for i in indices]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=1.0)
        out = []
        for ref in ready:
            try:
                out.append(self.ray.get(ref))
            except self.ray.exceptions.RayError:
                continue
        return out

    @property
    def _died(self) -> tuple:
        # A killed worker gives RayActorError; one that exits inside a task (os._exit, a crash in
        # native code) gives ActorUnavailableError ("may or may not have been executed").
        errors = self.ray.exceptions
        return (errors.RayActorError, getattr(errors, "ActorUnavailableError", errors.RayActorError))

    def _recover(self, population: str, index: int, method: str, args) -> object:
        """Shard `index` died: once Ray has restarted it from the latest checkpoint, replay what
        changed its agents since then, then send the failed call again. A shard that dies again
        doing so is restarted again; after MAX_RESTARTS the run fails with ShardDied (and stays
        resumable from its last checkpoint)."""
        actor = self.actors[population][index]
        replay = self.journal[population]
        if method in MUTATING:
            replay = replay[:-1]  # the failed call itself is sent below
        for _ in range(MAX_RESTARTS):
            restarted_from = self._restarted(population, index, actor)
            restart = {"population": population, "shard": index, "from_checkpoint": restarted_from,
                       "replayed": len(replay)}
            self.restarts.append(restart)
            try:
                for m, a in replay:
                    self.ray.get(getattr(actor, m).remote(*a))
                return self.ray.get(getattr(actor, method).remote(*args))
            except self._died:
                restart["died_again"] = True  # and Ray restarts it once more, if it may
        raise ShardDied(f"shard {index} of `{population}` died {MAX_RESTARTS + 1} times in `{method}` (its process "
                        "exits while doing this step: out of memory, a crash in a policy or a library?); the run "
                        "stops, and `populace resume` continues from the last checkpoint once the cause is fixed")

    def _restarted(self, population: str, index: int, actor):
        """Wait for Ray to bring the shard back; the checkpoint it reloaded (or None)."""
        deadline = time.monotonic() + 120
        while True:
            try:
                return self.ray.get(actor.take_restart.remote())
            except self.ray.exceptions.ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
            except self.ray.exceptions.RayActorError:  # Ray gave up on it: no restarts left
                raise ShardDied(f"shard {index} of `{population}` died and cannot be restarted again; the run "
                                "stops, and `populace resume` continues from the last checkpoint") from None

    def budget_spent(self) -> float:
        return budget_spent(self.ledger)

    def checkpoint_done(self) -> None:
        """The driver finished a checkpoint: calls before it need no replay."""
        for calls in self.journal.values():
            calls.clear()

    def close(self) -> None:
        for actors in self.actors.values():
            for a in actors:
                self.ray.kill(a)
        self.actors = {}
        for pool in getattr(self, "pools", {}).values():
            self.ray.kill(pool.handle)
        self.pools = {}
        if getattr(self, "ledger", None) is not None:
            self.ray.kill(self.ledger.handle)
            self.ledger = None
        if self.started_ray:
            self.ray.shutdown()


def budget_spent(ledger) -> float:
    """Dollars the run's ledger has settled (0 without a budget)."""
    return Remote(ledger).call("stats")["spent"] if ledger is not None else 0.0


def make_executor(kind: str, plan, shards: int | None = None, address: str | None = None, options: dict | None = None,
                  ranges: dict | None = None, workers: int | None = None):
    """`options`: what shards need besides the plan ({"cache", "replay", "environment", "restore"});
    `ranges`: a fixed layout (a resumed run keeps its checkpoint's); `workers`: the local executor's
    worker processes (None: local_workers decides; 0: none)."""
    if kind == "local":
        return LocalExecutor(plan, shards, options, ranges, workers)
    if kind == "ray":
        return RayExecutor(plan, shards, address or os.environ.get("RAY_ADDRESS"), options, ranges)
    raise ValueError(f"unknown executor {kind!r}")
