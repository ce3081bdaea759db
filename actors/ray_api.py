"""Every `ray.*` call of the hub lives here. The shard logic (`sender.py`, `scheduler.py`,
`supervisor.py`) is plain asyncio and never imports Ray, so it is tested without it.

Topology: one detached, named Supervisor; it creates a fixed pool of Scheduler shards and,
per channel group, Sender shards, each named and restarted by Ray when it dies
(`max_restarts=-1`). Shards rebuild their state from PostgreSQL when they come back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray

log = logging.getLogger(__name__)

NAMESPACE = "switchboard"
SUPERVISOR = "hub-supervisor"


def init(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Connect to `address` (RAY_ADDRESS) or start a local Ray. Token authentication is on
    (Ray's default for local clusters since 2.59: the token is generated into
    ~/.ray/auth_token). RAY_AUTH_MODE is read when `ray` is imported, so an operator who
    must change it sets it in the environment, never here."""
    if ray.is_initialized():
        return
    ray.init(address=address or None, namespace=NAMESPACE, include_dashboard=False,
             ignore_reinit_error=True, num_cpus=num_cpus, log_to_driver=False,
             logging_level=logging.WARNING)


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


def is_initialized() -> bool:
    return bool(ray.is_initialized())


# --- actor classes -----------------------------------------------------------------------


def _actor_options(name: str, detached: bool = False) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "name": name, "namespace": NAMESPACE, "max_restarts": -1, "max_task_retries": -1,
        "num_cpus": 0, "max_concurrency": 1000,
    }
    if detached:
        opts["lifetime"] = "detached"
    return opts


def create_shard(kind: str, name: str, spec: dict[str, Any]) -> Any:
    """A Sender or Scheduler shard actor (get it if it already exists)."""
    from actors.shells import SchedulerShell, SenderShell

    cls = {"sender": SenderShell, "scheduler": SchedulerShell}[kind]
    return ray.remote(cls).options(get_if_exists=True, **_actor_options(name)).remote(spec)


def get_or_create_supervisor(spec: dict[str, Any]) -> Any:
    from actors.shells import SupervisorShell

    return ray.remote(SupervisorShell).options(
        get_if_exists=True, **_actor_options(SUPERVISOR, detached=True)).remote(spec)


def get_actor(name: str) -> Any:
    return ray.get_actor(name, namespace=NAMESPACE)


def kill(handle: Any, *, restart: bool = True) -> None:
    ray.kill(handle, no_restart=not restart)


async def call(handle: Any, method: str, *args: Any, timeout: float | None = 30.0) -> Any:
    """Await one actor method call (batches go inside `args`, never one message per call)."""
    ref = getattr(handle, method).remote(*args)
    return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout)


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
