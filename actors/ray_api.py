"""Every `ray.*` call of the hub lives here. The shard logic (`sender.py`, `scheduler.py`,
`supervisor.py`) is plain asyncio and never imports Ray, so it is tested without it.

Topology: one detached, named Supervisor; it creates a fixed pool of Scheduler shards and,
per channel group, Sender shards, each named and restarted by Ray when it dies
(`max_restarts=-1`). Shards rebuild their state from PostgreSQL when they come back.

Placement: the Supervisor decides which node each shard runs on (`actors/placement.py`) and
pins it there softly (a shard whose node is gone is restarted by Ray anywhere); when the
alive nodes change it moves the shards that are not where the plan wants them. Every actor
starts its loop as soon as Ray (re)creates it, so a Supervisor restarted on another node
resumes reconciling without being called.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Any

import ray

log = logging.getLogger(__name__)

NAMESPACE = "switchboard"
SUPERVISOR = "hub-supervisor"


def init(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Connect to `address` (RAY_ADDRESS) or start a private local Ray. Token authentication
    is on (Ray's default for local clusters since 2.59: the token is generated into
    ~/.ray/auth_token). RAY_AUTH_MODE is read when `ray` is imported, so an operator who
    must change it sets it in the environment, never here.

    Without an address, "local" and not Ray's default: `ray.init()` would join whatever
    cluster the machine last started (/tmp/ray/ray_current_cluster), another hub's or a
    test's, and create or join the Supervisor there with this hub's database."""
    if ray.is_initialized():
        return
    if not address:
        # Ray starts workers at nice 15; the Sender shards then starve whenever PostgreSQL
        # or the gateway are busy. A private Ray runs them like the rest of the hub.
        os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(address=address or "local", namespace=NAMESPACE, include_dashboard=False,
             ignore_reinit_error=True, num_cpus=num_cpus, log_to_driver=False,
             logging_level=logging.WARNING)


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


def is_initialized() -> bool:
    return bool(ray.is_initialized())


# --- actor classes -----------------------------------------------------------------------


def _actor_options(name: str, detached: bool = False,
                   node_id: str | None = None) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "name": name, "namespace": NAMESPACE, "max_restarts": -1, "max_task_retries": -1,
        "num_cpus": 0, "max_concurrency": 1000,
    }
    if detached:
        opts["lifetime"] = "detached"
    if node_id is not None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=True)
    return opts


_EAGER: dict[type, type] = {}


def _eager(cls: type) -> type:
    """`cls` whose instance starts itself (its `ping`) as soon as Ray creates or restarts
    it, retrying while PostgreSQL or Redis are unreachable. An async actor's `__init__` runs
    on its event loop, so the start is a task of that loop."""
    if cls not in _EAGER:
        def __init__(self: Any, spec: dict[str, Any]) -> None:
            cls.__init__(self, spec)
            self._boot = asyncio.get_running_loop().create_task(_boot(self))

        _EAGER[cls] = type(cls.__name__, (cls,), {"__init__": __init__,
                                                 "__module__": cls.__module__})
    return _EAGER[cls]


async def _boot(actor: Any) -> None:
    delay = 0.5
    while True:
        try:
            await actor.ping()
            return
        except Exception as exc:
            log.warning("actor start failed; retrying", extra={
                "actor": type(actor).__name__, "error": repr(exc)[:200]})
            actor._started = None  # let the next ping (ours or a caller's) start afresh
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def alive_nodes() -> list[str]:
    """Ids of the cluster's alive nodes that can host shards, in a stable order: a node
    started with no CPUs (`ray start --head --num-cpus=0`, to keep the head small) gets
    none."""
    return sorted(n["NodeID"] for n in ray.nodes()
                  if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)


def create_shard(kind: str, name: str, spec: dict[str, Any],
                 node_id: str | None = None) -> Any:
    """A Sender or Scheduler shard actor (get it if it already exists), softly pinned to
    `node_id` when given."""
    from actors.shells import SchedulerShell, SenderShell

    cls = {"sender": SenderShell, "scheduler": SchedulerShell}[kind]
    return ray.remote(_eager(cls)).options(
        get_if_exists=True, **_actor_options(name, node_id=node_id)).remote(spec)


def get_or_create_supervisor(spec: dict[str, Any]) -> Any:
    """Join the hub's Supervisor, creating it on first use. Refuses to create a second one
    in another Ray cluster while the first is alive (its heartbeat is in Redis): two
    Supervisors over one database would run two sets of shards with the same lease owners."""
    from actors.shells import SupervisorShell

    other = live_supervisor_elsewhere(spec["redis_url"])
    deadline = time.monotonic() + HEARTBEAT_TTL_S + 1.0
    while other is not None and time.monotonic() < deadline:  # a just-stopped hub's beat
        time.sleep(1.0)
        other = live_supervisor_elsewhere(spec["redis_url"])
    if other is not None:
        raise RuntimeError(
            f"the hub's Supervisor already runs in the Ray cluster at {other}; start this "
            f"process with RAY_ADDRESS={other} to join it")
    return ray.remote(_eager(SupervisorShell)).options(
        get_if_exists=True, **_actor_options(SUPERVISOR, detached=True)).remote(spec)


#: Redis key the Supervisor refreshes while it runs: {"address": GCS address, "node": id}.
SUPERVISOR_KEY = "hub:supervisor"
HEARTBEAT_TTL_S = 10.0


def cluster_address() -> str:
    """The GCS address of the Ray cluster this process is connected to."""
    return str(ray.get_runtime_context().gcs_address)


def current_node() -> str:
    return str(ray.get_runtime_context().get_node_id())


def live_supervisor_elsewhere(redis_url: str) -> str | None:
    """The address of another Ray cluster whose Supervisor has a fresh heartbeat, if any."""
    import json

    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        raw = client.get(SUPERVISOR_KEY)
    except redis.RedisError:
        return None  # Redis down: nothing to compare against; joining is the common case
    finally:
        with contextlib.suppress(Exception):
            client.close()
    if not raw:
        return None
    address = str(json.loads(raw).get("address") or "")
    return address if address and address != cluster_address() else None


def actor_placement(names: list[str]) -> dict[str, dict[str, Any]]:
    """Named hub actors that are alive now → {"node": node id, "pid": pid, "restarts": n}.
    Read from the GCS directly (the state API would need the dashboard)."""
    from ray._private import state

    out: dict[str, dict[str, Any]] = {}
    for info in state.actors().values():
        if info.get("Name") in names and info.get("State") == "ALIVE":
            out[info["Name"]] = {"node": info["Address"]["NodeID"], "pid": info.get("Pid"),
                                 "restarts": info.get("NumRestarts", 0)}
    return out


def get_actor(name: str) -> Any:
    return ray.get_actor(name, namespace=NAMESPACE)


async def wait_name_free(name: str, timeout: float = 60.0) -> None:
    """Wait until no actor holds `name` (a killed actor releases it once it is dead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get_actor(name)
        except ValueError:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"actor {name} did not release its name")


def kill(handle: Any, *, restart: bool = True) -> None:
    ray.kill(handle, no_restart=not restart)


async def call(handle: Any, method: str, *args: Any, timeout: float | None = 30.0) -> Any:
    """Await one actor method call (batches go inside `args`, never one message per call)."""
    ref = getattr(handle, method).remote(*args)
    return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)


async def call_named(handles: dict[str, Any], name: str, method: str, *args: Any,
                     timeout: float | None = 30.0) -> Any:
    """Call the actor named `name`, through `handles` (a cache by name, filled here). If
    the actor is gone for good (the Supervisor moved its shard to another node, which makes
    a new actor under the same name), look the name up again and call that one."""
    if name not in handles:
        handles[name] = get_actor(name)
    try:
        return await call(handles[name], method, *args, timeout=timeout)
    except Exception as exc:
        if not is_actor_error(exc):
            raise
        handles[name] = get_actor(name)
        return await call(handles[name], method, *args, timeout=timeout)


async def gather(calls: list[tuple[Any, str, tuple[Any, ...]]],
                 timeout: float | None = 30.0) -> list[Any]:
    """Several actor calls at once; exceptions are returned, not raised."""
    refs = [getattr(h, m).remote(*a) for h, m, a in calls]
    futs = [asyncio.wrap_future(r.future()) for r in refs]
    return list(await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), timeout))


def is_actor_error(exc: BaseException) -> bool:
    return isinstance(exc, ray.exceptions.RayActorError | ray.exceptions.ActorUnavailableError)


def metric(kind: str, name: str, description: str, tags: tuple[str, ...],
           **kwargs: Any) -> Any:
    """A `ray.util.metrics` metric, exported by Ray's metrics agent to Prometheus."""
    from ray.util import metrics

    cls = {"counter": metrics.Counter, "gauge": metrics.Gauge,
           "histogram": metrics.Histogram}[kind]
    return cls(name, description=description, tag_keys=tags, **kwargs)


def metrics_url() -> str | None:
    """Where this node's Ray metrics agent serves the actors' metrics to Prometheus."""
    node = getattr(ray._private.worker, "_global_node", None)
    port = getattr(node, "metrics_export_port", None)
    return f"http://127.0.0.1:{port}/metrics" if port else None
