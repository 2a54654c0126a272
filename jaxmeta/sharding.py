"""Data parallelism over the task axis, on one host or many, with JAX's own machinery.

The meta-batch is split over a 1-D device mesh whose single axis is ``"tasks"``:
each device samples, adapts to and differentiates through its own tasks, and the
meta-gradient is averaged across devices by the all-reduce XLA inserts for the mean
over tasks. Parameters, optimizer state and the dataset are replicated.

How the task axis gets sharded. The episode sampler runs inside the jitted step, so
no host ever feeds episodes. Two ways are offered (``sampler=``):

* ``"constraint"`` (default): the sampled batch gets
  ``jax.lax.with_sharding_constraint(..., P("tasks"))``. The mesh uses ``Auto`` axis
  types, so the partitioner propagates that sharding backwards into the sampler
  (``jax.random.split`` + ``vmap`` of per-task draws; threefry is partitionable) and
  forwards into the vmapped meta-gradient: every device draws only its own tasks from
  its replica of the data, with the *same* keys as on one device, so a sharded step
  equals the single-device step to float tolerance (only the reduction order of the
  mean differs) and a run may resume on a different device count.
* ``"shard_map"``: ``jax.shard_map`` runs the sampler once per device for
  ``tasks / devices`` tasks with ``fold_in(key, axis_index("tasks"))``. Same task
  distribution, a different random stream (so not equal to the single-device run);
  kept for comparison in ``benchmarks/scaling.py``.

``jax.make_mesh`` defaults to ``Explicit`` axes in this JAX, under which the vmapped
meta-gradient over a sharded task axis does not trace; the mesh here is ``Auto``.

Multi-host: :func:`initialize_distributed` calls ``jax.distributed.initialize`` (from
arguments, else ``JAXMETA_*`` environment variables, else JAX's own cluster detection)
before any computation. Every process then runs the same program; the mesh spans the
devices of all processes (``jax.devices()``), each process puts the replicated state
and data on its own devices (:func:`replicate`), and orbax saves and restores the
replicated state from all processes (each array is written once, by the process that
holds its replica 0, and read back by every process).

References:
  JAX documentation, "Distributed arrays and automatic parallelization" and
  "Using JAX in multi-host and multi-process environments".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxmeta.types import Episode, PRNGKey, PyTree

__all__ = [
    "ENV_COORDINATOR",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "SAMPLERS",
    "TASK_AXIS",
    "check_divisible",
    "describe",
    "gather",
    "initialize_distributed",
    "is_primary",
    "make_task_mesh",
    "param_sharding",
    "place_state",
    "replicate",
    "replicated",
    "shard_eval_episodes",
    "shard_tasks",
    "sharded_sampler",
    "task_sharding",
]

TASK_AXIS = "tasks"
SAMPLERS = ("constraint", "shard_map")
ENV_COORDINATOR = "JAXMETA_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAXMETA_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXMETA_PROCESS_ID"


# --------------------------------------------------------------------------- processes


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"${name} must be an integer, got {value!r}") from None


def initialize_distributed(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    auto: bool = False,
    initialization_timeout: int = 300,
) -> bool:
    """Start JAX's multi-process runtime (``jax.distributed.initialize``) if asked to.

    Each argument left ``None`` falls back to ``$JAXMETA_COORDINATOR_ADDRESS``,
    ``$JAXMETA_NUM_PROCESSES``, ``$JAXMETA_PROCESS_ID``. Nothing happens (and ``False``
    is returned) when no coordinator address is known and ``auto`` is false, so a
    single-process run is unchanged. ``auto=True`` without an address lets JAX detect
    the cluster (SLURM, Open MPI, TPU pods). Must run before any JAX computation.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service.
      num_processes: total number of processes.
      process_id: this process's index in ``[0, num_processes)``.
      local_device_ids: the devices of this host this process drives (default: all).
      auto: initialize with JAX's cluster auto-detection when no address is given.
      initialization_timeout: seconds to wait for all processes to connect.

    Returns:
      Whether ``jax.distributed.initialize`` was called (or had been already).

    Raises:
      ValueError: an address without the process count or id, or an id out of range.
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if coordinator_address is None:
        if not auto:
            if num_processes not in (None, 1):
                raise ValueError(
                    f"num_processes={num_processes} needs a coordinator address (distributed."
                    f"coordinator_address, --coordinator-address or ${ENV_COORDINATOR})"
                )
            return False
        jax.distributed.initialize(initialization_timeout=initialization_timeout)
        return True
    if num_processes is None or process_id is None:
        raise ValueError(
            f"coordinator address {coordinator_address!r} given without "
            f"{'num_processes' if num_processes is None else 'process_id'}: set "
            "distributed.num_processes and distributed.process_id (or --num-processes / "
            f"--process-id, ${ENV_NUM_PROCESSES} / ${ENV_PROCESS_ID})"
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            f"need num_processes >= 1 and 0 <= process_id < num_processes, got "
            f"num_processes={num_processes}, process_id={process_id}"
        )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=None if local_device_ids is None else list(local_device_ids),
        initialization_timeout=initialization_timeout,
    )
    return True


def is_primary() -> bool:
    """Whether this is process 0 (the one that writes logs, configs and results)."""
    return jax.process_index() == 0


# --------------------------------------------------------------------------- mesh


def make_task_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D ``Auto`` mesh whose axis ``"tasks"`` splits the meta-batch.

    Args:
      devices: how many of ``jax.devices()`` (all processes' devices, in order) to use,
        or the devices themselves; ``None``: all of them.

    Raises:
      ValueError: more devices asked for than exist, or fewer than one.
    """
    available = jax.devices()
    if devices is None:
        devs = list(available)
    elif isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"mesh of {devices} devices requested but {len(available)} "
                f"{'is' if len(available) == 1 else 'are'} available "
                f"({jax.process_count()} process(es), backend {jax.default_backend()!r})"
            )
        if jax.process_count() > 1 and devices != len(available):
            raise ValueError(
                f"a multi-process run must use all {len(available)} devices of its "
                f"{jax.process_count()} processes, got devices={devices}"
            )
        devs = list(available[:devices])
    else:
        devs = list(devices)
    return jax.make_mesh((len(devs),), (TASK_AXIS,), axis_types=(AxisType.Auto,), devices=devs)


def check_divisible(meta_batch_size: int, devices: int | Mesh) -> None:
    """Raise a ValueError unless the meta-batch splits evenly over the devices."""
    n = devices.size if isinstance(devices, Mesh) else int(devices)
    if meta_batch_size % n:
        raise ValueError(
            f"meta-batch size {meta_batch_size} is not divisible by the {n} devices of the "
            f"task mesh: each device must get the same number of tasks (use a meta-batch "
            f"that is a multiple of {n}, or a device count that divides {meta_batch_size})"
        )


def task_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (task) axis split over the mesh, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(TASK_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Put every leaf of ``tree`` on all mesh devices (a global, replicated array).

    Multi-process safe: each process supplies the copies on its own devices from its
    local value (``jax.make_array_from_process_local_data``), which must be the same on
    every process (it is: state and data come from the same seed and files).
    """
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
    )


def param_sharding(x: Any, mesh: Mesh, *, min_size: int = 2**14) -> NamedSharding:
    """Sharding of one parameter-sized array when parameters are sharded (FSDP-style).

    The largest axis that divides by the mesh size is split over ``"tasks"``; arrays
    with fewer than ``min_size`` elements (biases, scalars, counters) or without such an
    axis stay replicated. With ``Auto`` axes XLA all-gathers a sharded weight where the
    model uses it and reduce-scatters its gradient.
    """
    shape = tuple(x.shape)
    if int(np.prod(shape, dtype=np.int64)) >= min_size:
        for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
            if shape[axis] % mesh.size == 0:
                spec = [None] * len(shape)
                spec[axis] = TASK_AXIS
                return NamedSharding(mesh, PartitionSpec(*spec))
    return replicated(mesh)


def place_state(
    state: Any, mesh: Mesh, *, shard_params: bool = False, min_size: int = 2**14
) -> Any:
    """Put a training state on the mesh: replicated, or with parameters and optimizer
    state sharded by :func:`param_sharding` (``shard_params``, for large models).

    ``state`` needs ``params`` and ``opt_state`` fields (a NamedTuple such as
    :class:`jaxmeta.train.state.TrainState`); everything else is replicated.
    """
    state = replicate(state, mesh)
    if not shard_params:
        return state
    target = state._replace(
        params=jax.tree_util.tree_map(
            lambda x: param_sharding(x, mesh, min_size=min_size), state.params
        ),
        opt_state=jax.tree_util.tree_map(
            lambda x: param_sharding(x, mesh, min_size=min_size), state.opt_state
        ),
    )
    shardings = jax.tree_util.tree_map(
        lambda x, t: t if isinstance(t, NamedSharding) else replicated(mesh),
        state,
        target,
        is_leaf=lambda t: isinstance(t, NamedSharding),
    )
    # A jitted identity reshards global arrays, also across processes.
    return jax.jit(lambda t: t, out_shardings=shardings)(state)


def shard_eval_episodes(episodes: Episode, mesh: Mesh) -> Episode:
    """Fixed evaluation episodes (identical host arrays on every process) split by task.

    Each process places only the slices its devices hold. Falls back to replication
    when the episode count does not divide over the mesh.
    """
    n = episodes.support_x.shape[0]
    sharding = task_sharding(mesh) if n % mesh.size == 0 else replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(put, episodes)


def gather(tree: PyTree, mesh: Mesh) -> PyTree:
    """Host NumPy copies of (possibly sharded, multi-process) arrays on every process.

    The all-gather is an XLA collective (a jitted identity with replicated output), so
    per-episode evaluation metrics computed on all hosts' devices are aggregated on
    each host.
    """
    rep = jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)
    return jax.tree_util.tree_map(np.asarray, rep)


# --------------------------------------------------------------------------- the step


def shard_tasks(episodes: Episode, mesh: Mesh) -> Episode:
    """Constrain the leading task axis of every field to be split over ``mesh``.

    For use inside ``jit``; with ``Auto`` axes the constraint also propagates into the
    computation that produced ``episodes`` (the on-device sampler).
    """
    return jax.tree_util.tree_map(
        lambda x: jax.lax.with_sharding_constraint(x, task_sharding(mesh)), episodes
    )


def sharded_sampler(
    sample: Callable[[PRNGKey, PyTree, int], Episode],
    mesh: Mesh,
    *,
    tasks: int,
    sampler: str = "constraint",
) -> Callable[[PRNGKey, PyTree], Episode]:
    """Wrap a jittable sampler so the meta-batch it draws is split over the mesh.

    Args:
      sample: ``(key, data, tasks) -> Episode`` with a leading ``[tasks]`` axis, e.g.
        ``lambda k, d, n: source.sample(k, d, tasks=n)``.
      mesh: a mesh from :func:`make_task_mesh`.
      tasks: the meta-batch size; must be divisible by the mesh size.
      sampler: ``"constraint"`` (same episodes as one device) or ``"shard_map"``
        (per-device keys ``fold_in(key, device index)``); see the module docstring.

    Returns:
      ``(key, data) -> Episode`` for use inside the jitted training step; ``data``
      must be replicated over ``mesh``.

    Raises:
      ValueError: ``tasks`` not divisible by the devices, or an unknown ``sampler``.
    """
    check_divisible(tasks, mesh)
    if sampler == "constraint":
        return lambda key, data: shard_tasks(sample(key, data, tasks), mesh)
    if sampler == "shard_map":
        local = tasks // mesh.size
        spec = PartitionSpec(TASK_AXIS)

        def per_device(key, data):
            key = jax.random.fold_in(key, jax.lax.axis_index(TASK_AXIS))
            return sample(key, data, local)

        def run(key, data):
            return jax.shard_map(
                per_device,
                mesh=mesh,
                in_specs=(PartitionSpec(), PartitionSpec()),
                out_specs=spec,
                check_vma=False,
            )(key, data)

        return run
    raise ValueError(f"unknown sampler {sampler!r}; available: {', '.join(SAMPLERS)}")


def describe(mesh: Mesh | None) -> dict[str, Any]:
    """Devices and processes of a mesh (for logs and environment.json)."""
    if mesh is None:
        return {"devices": 1, "processes": jax.process_count()}
    return {
        "devices": int(mesh.size),
        "processes": jax.process_count(),
        "process_index": jax.process_index(),
        "local_devices": len(
            [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
        ),
        "axis": TASK_AXIS,
    }
