"""Runtime: the tf.distribute strategy, replicas, and the cores each replica spans.

Two kinds of parallelism, orthogonal (algorithm.md section 7):
  depth     within a replica, unit i runs on logical core k_i of C cores; inside a
            step no unit waits for another, so the step tends to the slowest core's
            forward + VJP. Only activations and messages cross between cores.
  data      R replicas of the whole pipeline, each on its own B clips with its own
            buffers; one gradient all-reduce per parameter update.

    strategy        replicas                          cores of replica r
    "default"       1 (no tf.distribute)              devices[k]
    "mirrored"      len(devices) // C (GPUs, CPUs)    devices[r*C + k]
    "multi_worker"  per host: local devices // C      local devices[r*C + k] (TF_CONFIG)
    "tpu"           TPU cores // C                    logical core k of a DeviceAssignment

Usage (what train() does; gin binds make_runtime as `runtime`):

    runtime = make_runtime(strategy="mirrored", cores_per_replica=2, placement="auto")
    cores = runtime.assign_cores(lambda: model_fn(...))   # 'auto' measures the units
    with runtime.scope():
        pipeline = model_fn(..., placement=runtime.placement(cores))
        optimizer = ...; engine = Engine(pipeline, mode, optimizer)
    batches, _ = runtime.batches(make_dataset, global_batch)  # R_local * B clips a batch
    batch = next(batches)
    engine.train_clip(batch["frames"], batch["label"])  # each local replica gets its B

Input: each process reads its own shard (`shard_dataset`) and batches R_local * B
clips; the engine hands each local replica its B. (A plain iterator, unlike
distribute_datasets_from_function's, can be checkpointed, so resume stays exact.)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Sequence

import gin
import tensorflow as tf

from sideways_tf import placement as placement_lib

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


class PeerLostError(RuntimeError):
    """Another worker of a multi-worker run is gone; the message names the last checkpoint."""


class Runtime:
    """A strategy, the plan that places units on each replica's cores, and who is chief.

    Build it with make_runtime(); see the module docstring.
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy | None,
        plan: placement_lib.Plan,
        placement_arg: str | Sequence[int] = "contiguous",
        cluster_resolver=None,
        distributed_input: bool = False,
    ):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.plan = plan
        self.placement_setting = placement_arg  # gin runtime.placement: see assign_cores
        self.cluster_resolver = cluster_resolver
        self.is_distributed = strategy is not None
        self.distributed_input = distributed_input and self.is_distributed
        self._sum_over_replicas = None  # per_worker's all-reduce, traced on first use

    # -- Facts ---------------------------------------------------------------------

    @property
    def cores_per_replica(self) -> int:
        return self.plan.num_cores

    @property
    def num_replicas(self) -> int:
        """Replicas in sync, over every worker."""
        return self.strategy.num_replicas_in_sync

    @property
    def local_replicas(self) -> int:
        if not self.is_distributed:
            return 1
        return len(self.strategy.extended.worker_devices)

    @property
    def num_workers(self) -> int:
        return self.num_replicas // self.local_replicas

    @property
    def worker_index(self) -> int:
        resolver = self.cluster_resolver
        if resolver is None or not resolver.task_type:
            return 0
        return int(resolver.task_id or 0)

    @property
    def is_chief(self) -> bool:
        """Whether this process writes checkpoints, summaries and config (worker 0)."""
        resolver = self.cluster_resolver
        if resolver is None or not resolver.task_type or resolver.task_type == "chief":
            return True
        has_chief = "chief" in resolver.cluster_spec().jobs
        return not has_chief and resolver.task_type == "worker" and self.worker_index == 0

    def per_worker(self, value: int) -> list[int]:
        """Every worker's `value`, known to all workers: [value of worker 0, 1, ...].

        One all-reduce over the workers (a no-op with one worker). Each worker must
        call it at the same point of the loop: train() calls it after every step, so
        that a signal to any worker stops all of them at the same step, and as the
        barrier between the workers' data positions and the chief's checkpoint.
        """
        if self.num_workers == 1:
            return [int(value)]
        if self._sum_over_replicas is None:
            strategy = self.strategy

            @tf.function
            def sum_over_replicas(x):
                def replica(x):
                    return tf.distribute.get_replica_context().all_reduce("sum", tf.identity(x))

                return strategy.experimental_local_results(strategy.run(replica, args=(x,)))[0]

            self._sum_over_replicas = sum_over_replicas
        mine = [0.0] * self.num_workers
        mine[self.worker_index] = float(value) / self.local_replicas  # (each local replica adds)
        total = self._sum_over_replicas(tf.constant(mine, tf.float64))
        return [int(round(v)) for v in total.numpy()]

    def describe(self) -> str:
        kind = type(self.strategy).__name__ if self.is_distributed else "no strategy"
        return (
            f"{kind}: {self.num_replicas} replica(s) ({self.local_replicas} in this process, "
            f"{self.num_workers} worker(s)), {self.cores_per_replica} core(s) per replica"
        )

    # -- Placement ---------------------------------------------------------------------

    def assign_cores(self, build_probe: Callable[[], object] | None = None) -> list[int] | None:
        """Core index per unit from runtime.placement.

        'contiguous': equal contiguous blocks (decided by the pipeline: None here).
        'auto': builds a probe pipeline outside any strategy (build_probe()), counts
        each unit's forward + VJP FLOPs (sideways_tf.costs) and balances them.
        A sequence: used as given (checked when the pipeline is built).
        """
        if isinstance(self.placement_setting, str):
            if self.placement_setting == "contiguous":
                return None
            if build_probe is None:
                raise ValueError("runtime.placement='auto' needs a pipeline to measure.")
            from sideways_tf import costs

            probe = build_probe()
            flops = [c.flops for c in costs.unit_costs(probe)]
            return placement_lib.balance(flops, self.cores_per_replica)
        return [int(k) for k in self.placement_setting]

    def placement(self, cores: Sequence[int] | None = None) -> placement_lib.Placement:
        """The Placement to build a pipeline with: this runtime's plan and these cores.

        cores: a logical core k_i per unit, e.g. from assign_cores(); None: equal
        contiguous blocks. Checked against the units when the pipeline is built.
        Build inside scope(), so that variables land on their cores:

            with runtime.scope():
                pipeline = model_fn(..., placement=runtime.placement(cores))
        """
        return placement_lib.Placement(self.plan, None if cores is None else tuple(cores))

    @contextlib.contextmanager
    def scope(self):
        """Build pipelines, optimizers and engines inside (pipelines given `placement()`).

        Enters the strategy's scope and, for a replica spanning several devices,
        remap_variables, which moves each replica's copy of a unit's variables to the
        unit's core while the pipeline builds it.
        """
        with contextlib.ExitStack() as stack:
            if isinstance(self.plan, placement_lib.DevicePlan) and len(self.plan.devices) > 1:
                stack.enter_context(placement_lib.remap_variables(self.plan))
            if self.is_distributed:
                stack.enter_context(self.strategy.scope())
            yield self

    # -- Input ---------------------------------------------------------------------------

    def shard_dataset(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """This worker's share of an (unbatched) dataset: every num_workers-th element."""
        if self.num_workers == 1:
            return dataset
        return dataset.shard(self.num_workers, self.worker_index)

    def batches(self, make_dataset: Callable, global_batch: int, symbolic: bool = False):
        """Training batches: (iterator, whether its position can be checkpointed).

        global_batch: R x B clips over all processes (train.global_batch).
        Default: this process's shard, batched R_local * B, a plain iterator the
        engine splits over local replicas (checkpointable: exact resume).
        distributed_input: strategy.distribute_datasets_from_function, B per
        replica, prefetched to the devices; TF cannot checkpoint such an iterator,
        so a resumed run restarts the input stream.
        """
        if self.distributed_input:

            def per_input_pipeline(ctx):
                ds = make_dataset().shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
                per_replica = ctx.get_per_replica_batch_size(global_batch)
                return ds.batch(per_replica, drop_remainder=True).prefetch(2)

            dist = self.strategy.distribute_datasets_from_function(per_input_pipeline)
            return iter(dist), False
        ds = self.shard_dataset(make_dataset())
        ds = ds.batch(global_batch // self.num_workers, drop_remainder=True)
        if symbolic:  # positions only, no prefetched or shuffled elements
            options = tf.data.Options()
            options.experimental_symbolic_checkpoint = True
            ds = ds.with_options(options)
        return iter(ds.prefetch(2)), True

    def to_host(self, value):
        """This process's part of a per-replica value as one tensor (replicas concatenated)."""
        if isinstance(value, tf.distribute.DistributedValues):
            return tf.concat(self.strategy.experimental_local_results(value), axis=0)
        return value


def _local_devices() -> list[str]:
    """This process's devices for units: every GPU, else every logical CPU."""
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    return gpus or [d.name for d in tf.config.list_logical_devices("CPU")]


def _check_cores_per_replica(cores: int, devices: Sequence, what: str) -> int:
    if not isinstance(cores, int) or isinstance(cores, bool) or cores < 1:
        raise ValueError(
            f"runtime.cores_per_replica must be a positive integer, got {cores!r}: how many "
            "cores (devices) one replica's units are spread over."
        )
    if cores > len(devices):
        raise ValueError(
            f"runtime.cores_per_replica = {cores}, but {what} has only {len(devices)} "
            f"device(s) ({', '.join(str(d).split('device:')[-1] for d in devices)}). Lower "
            "cores_per_replica, or give more devices (runtime.devices; on a CPU, logical "
            "devices via tf.config.set_logical_device_configuration)."
        )
    if len(devices) % cores:
        raise ValueError(
            f"{len(devices)} devices do not split into replicas of runtime.cores_per_replica = "
            f"{cores}; pick a divisor of {len(devices)}, or list the devices to use in "
            "runtime.devices."
        )
    return len(devices) // cores


def tpu_computation_shape(mesh_shape: Sequence[int], cores: int) -> list[int]:
    """The [x, y, z, core] box of C cores one replica spans on a TPU mesh.

    C up to the cores of one chip stays on one chip; more takes whole chips,
    filling x, then y, then z, with each extent dividing the mesh's.
    """
    *chips_mesh, per_chip = [int(m) for m in mesh_shape]
    if cores <= per_chip:
        if per_chip % cores:
            raise ValueError(
                f"runtime.cores_per_replica = {cores} does not divide the {per_chip} cores of "
                "a TPU chip; use a divisor or a multiple of it."
            )
        return [1] * len(chips_mesh) + [cores]
    if cores % per_chip:
        raise ValueError(
            f"runtime.cores_per_replica = {cores} is not a multiple of the {per_chip} cores "
            "per TPU chip."
        )
    chips, shape = cores // per_chip, []
    for extent in chips_mesh:
        take = math.gcd(chips, extent)
        shape.append(take)
        chips //= take
    if chips != 1:
        raise ValueError(
            f"runtime.cores_per_replica = {cores} does not fit the TPU mesh {list(mesh_shape)} "
            "as a box of whole chips; pick a C whose chips tile the mesh."
        )
    return shape + [per_chip]


def tpu_device_assignment(topology, cores: int):
    """DeviceAssignment of replicas spanning C cores each (SPMD partitioning off)."""
    shape = tpu_computation_shape(topology.mesh_shape, cores)
    total = int(topology.num_tasks) * int(topology.num_tpus_per_task)
    if total % cores:
        raise ValueError(
            f"runtime.cores_per_replica = {cores} does not divide the {total} TPU cores; "
            "pick a divisor."
        )
    return tf.tpu.experimental.DeviceAssignment.build(
        topology, computation_shape=shape, num_replicas=total // cores
    )


def connect_tpu(tpu: str | None):
    """TPUClusterResolver, connect (unless local), initialise; returns (resolver, topology)."""
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    if tpu not in (None, "", "local"):
        tf.config.experimental_connect_to_cluster(resolver)
    topology = tf.tpu.experimental.initialize_tpu_system(resolver)
    return resolver, topology


@gin.configurable("runtime", module="sideways_tf")
def make_runtime(
    strategy: str = "default",  # default | mirrored | multi_worker | tpu
    tpu: str | None = None,  # TPU name or "local" (a TPU VM); implies strategy="tpu"
    devices: Sequence[str] | None = None,  # devices to use (default: all GPUs, else CPUs)
    cores_per_replica: int = 1,  # C: cores (devices) one replica's units span
    placement: str | Sequence[int] = "contiguous",  # "contiguous", "auto", or a core per unit
    logical_cpus: int | None = None,  # split the CPU into n logical devices (try it on a laptop)
    distributed_input: bool = False,  # feed replicas by distribute_datasets_from_function
) -> Runtime:
    """Builds the runtime; every check fails here, before any work, naming the binding."""
    if logical_cpus is not None:
        split_cpu(logical_cpus)
    if tpu is not None and strategy == "default":
        strategy = "tpu"
    if strategy not in STRATEGIES:
        raise ValueError(f"runtime.strategy = {strategy!r}; choose one of {list(STRATEGIES)}.")
    if isinstance(placement, str) and placement not in ("contiguous", "auto"):
        raise ValueError(
            f"runtime.placement = {placement!r}; use 'contiguous', 'auto', or one core index "
            "per unit, e.g. (0, 0, 1, 1)."
        )
    if strategy == "tpu":
        resolver, topology = connect_tpu(tpu)
        assignment = tpu_device_assignment(topology, cores_per_replica)
        tpu_strategy = tf.distribute.TPUStrategy(
            resolver,
            experimental_device_assignment=assignment,
            experimental_spmd_xla_partitioning=False,
        )
        plan = placement_lib.TPUPlan(tpu_strategy, cores_per_replica)
        return Runtime(
            tpu_strategy,
            plan,
            placement,
            cluster_resolver=resolver,
            distributed_input=distributed_input,
        )

    if strategy == "multi_worker":
        runtime = _multi_worker_runtime(devices, cores_per_replica, placement)
        runtime.distributed_input = distributed_input
        return runtime

    devices = [placement_lib.resolve_device(d) for d in devices] if devices else _local_devices()
    if strategy == "default":
        if cores_per_replica == 1 and not _any_accelerator():
            devices = [None]  # a CPU: let TensorFlow place ops
        elif cores_per_replica > len(devices):
            _check_cores_per_replica(cores_per_replica, devices, "this process")
        plan = placement_lib.DevicePlan.single(devices[:cores_per_replica])
        return Runtime(None, plan, placement)

    replicas = _check_cores_per_replica(cores_per_replica, devices, "runtime.devices")
    rows = [devices[r * cores_per_replica : (r + 1) * cores_per_replica] for r in range(replicas)]
    mains = [row[0] for row in rows]
    cross_device_ops = None  # GPUs: TensorFlow's default (collectives, NCCL)
    if all("CPU" in tf.DeviceSpec.from_string(d).device_type for d in mains):
        # CPU collectives key their instances per strategy, and several strategies in
        # one process (tests, notebooks) then collide; on CPUs a reduction on one
        # device costs the same.
        cross_device_ops = tf.distribute.ReductionToOneDevice(reduce_to_device=mains[0])
    mirrored = tf.distribute.MirroredStrategy(mains, cross_device_ops=cross_device_ops)
    plan = placement_lib.DevicePlan(rows, main_devices=mirrored.extended.worker_devices)
    return Runtime(mirrored, plan, placement, distributed_input=distributed_input)


def split_cpu(n: int):
    """Configures n logical CPU devices (stand-ins for accelerators); before TF starts.

    They share one thread pool, so they show placement and replicas working, not
    speed-ups (benchmarks/depth_parallel.py measures concurrency instead).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"runtime.logical_cpus must be a positive integer, got {n!r}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * n
        )
    except RuntimeError as e:
        raise ValueError(
            f"runtime.logical_cpus = {n}: TensorFlow has already started with "
            f"{len(current or [None])} CPU device(s); logical devices can only be set before "
            "it runs anything. Set them first in your program, or drop runtime.logical_cpus."
        ) from e


def _any_accelerator() -> bool:
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def _multi_worker_runtime(devices, cores_per_replica, placement_arg) -> Runtime:
    if not os.environ.get("TF_CONFIG"):
        raise ValueError(
            "runtime.strategy = 'multi_worker' needs the TF_CONFIG environment variable on "
            'every host, e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}.'
        )
    try:
        json.loads(os.environ["TF_CONFIG"])
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}.") from e
    tf_config = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    # The strategy must be created before TensorFlow's runtime starts (it configures
    # collective ops), so count devices without starting it.
    gpus = len(tf.config.list_physical_devices("GPU"))
    if devices:
        local = [d if d.startswith("/") else "/" + d for d in devices]
    elif gpus:
        local = [f"/device:GPU:{i}" for i in range(gpus)]
    else:
        cpu = tf.config.list_physical_devices("CPU")[0]
        logical = len(tf.config.get_logical_device_configuration(cpu) or [None])
        local = [f"/device:CPU:{i}" for i in range(logical if cores_per_replica > 1 else 1)]
    replicas = _check_cores_per_replica(cores_per_replica, local, "each worker")
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf_config.cluster_spec(),
        task_type=tf_config.task_type,
        task_id=tf_config.task_id,
        num_accelerators={"GPU": replicas} if gpus else {},
        rpc_layer=tf_config.rpc_layer or "grpc",
    )
    strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    mains = strategy.extended.worker_devices
    rows = []
    for r, main in enumerate(mains):
        spec = tf.DeviceSpec.from_string(main)
        row = []
        for k in range(cores_per_replica):
            local_spec = tf.DeviceSpec.from_string(local[r * cores_per_replica + k])
            row.append(
                spec.replace(
                    device_type=local_spec.device_type, device_index=local_spec.device_index
                ).to_string()
            )
        rows.append(row)
    plan = placement_lib.DevicePlan(rows, main_devices=mains)
    return Runtime(strategy, plan, placement_arg, cluster_resolver=resolver)
