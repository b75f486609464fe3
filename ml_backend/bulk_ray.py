"""The Ray Data engine of ``safire preannotate`` (imported only when the command runs with Ray).

Pipeline (streaming: the executor pulls pages and tasks only as fast as the actors and the uploader
consume them, with Ray Data's backpressure bounding what is in flight)::

    from_items(task-id ranges)                     one row per shard of the project's task ids
      .flat_map(list_shard, num_cpus=0.1)           keyset pages of GET /api/tasks -> one row per task
      .map_batches(TaskPredictor, ActorPoolStrategy(size=workers), num_cpus/num_gpus per actor)
      .iter_batches()                               -> the driver uploads chunks and keeps the books

Offline runs start from ``from_items(tasks)``. Each actor builds the backend's model registry once
(``TaskPredictor``: one model per worker, on the CPU or, with ``SAFIRE_DEVICE=cuda`` and
``--gpus-per-worker``, a GPU) and predicts with the backend's own code.

A local run starts Ray on this machine only: ``ray.init(num_cpus=..., include_dashboard=False,
_node_ip_address="127.0.0.1")`` with usage statistics off and a bounded object store, and stops it
at the end. ``--ray-address`` joins a running cluster instead (``ray start --head`` on one machine,
``ray start --address=HEAD:6379`` on the others, each with this package installed and the same
environment variables); the cluster is left running.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

__all__ = ["run_ray"]


def _list_rows(row: Dict[str, Any], conn: Mapping[str, Any]) -> List[Dict[str, Any]]:
    from ml_backend.bulk_io import list_shard

    return list_shard(conn, int(row["after"]), int(row["before"]))


def start_ray(opts: Any) -> bool:
    """Start (or join) Ray; True when this call started a local instance (to shut down later)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave the machine
    if not opts.ray_address:
        # a single-machine Ray: its node address is the loopback one (what Ray does on macOS), read
        # when ray is imported, so its servers are not reachable from other machines
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    import ray._private.ray_constants as ray_constants

    if not opts.ray_address:
        ray_constants.ENABLE_RAY_CLUSTER = False  # ray was imported before the variable was set

    if ray.is_initialized():
        return False
    if opts.ray_address:
        ray.init(address=opts.ray_address, log_to_driver=True, configure_logging=False)
        return False
    cpus = max(1, int(round(opts.workers * max(0.0, opts.cpus_per_worker)))) + 1  # +1: listing and I/O tasks
    gpus = int(round(opts.workers * opts.gpus_per_worker + 0.499)) if opts.gpus_per_worker > 0 else 0
    ray.init(num_cpus=cpus, num_gpus=gpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=max(80, int(opts.object_store_mb)) * 2**20, log_to_driver=True,
             configure_logging=False)
    return True


def run_ray(job: Mapping[str, Any], opts: Any, *, shards: Sequence[Tuple[int, int]], conn: Mapping[str, Any],
            rows: Optional[List[Dict[str, Any]]] = None) -> Iterator[Dict[str, Any]]:
    """Outcomes of every task (online: listed from ``shards``; offline: ``rows``), as they finish."""
    started = start_ray(opts)
    import ray
    import ray.data

    from ml_backend.bulk_worker import TaskPredictor

    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the command draws its own bar
        ctx.print_on_execution_start = False
        if rows is None:
            if not shards:
                return
            ds = ray.data.from_items([{"after": a, "before": b} for a, b in shards], override_num_blocks=len(shards))
            ds = ds.flat_map(_list_rows, fn_kwargs={"conn": dict(conn)}, num_cpus=0.1)
        else:
            if not rows:
                return
            ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * opts.workers)))
        remote: Dict[str, Any] = {"num_cpus": float(opts.cpus_per_worker)}
        if opts.gpus_per_worker > 0:
            remote["num_gpus"] = float(opts.gpus_per_worker)
        ds = ds.map_batches(TaskPredictor, fn_constructor_kwargs={"job": dict(job)}, batch_size=int(opts.batch_size),
                            compute=ray.data.ActorPoolStrategy(size=int(opts.workers)), batch_format="numpy",
                            **remote)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
            for i in range(len(batch["id"])):
                pred = batch["prediction"][i]
                yield {"id": int(batch["id"][i]), "status": str(batch["status"][i]), "reason": str(batch["reason"][i]),
                       "message": str(batch["message"][i]),
                       "prediction": json.loads(pred) if isinstance(pred, str) and pred else None,
                       "seconds": float(batch["seconds"][i])}
    finally:
        if started:
            ray.shutdown()
