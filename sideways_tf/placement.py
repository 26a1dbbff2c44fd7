"""Where each unit lives: logical core indices and the plans that realise them.

Each unit i gets a logical core index k_i in 0..C-1 (C = cores per replica). Its
parameters, optimizer slots and buffers live on core k_i of every replica, and its
share of every step runs there; per step and edge j -> i only one activation goes
up and one gradient message goes down (algorithm.md section 7).

A plan turns k into the right context for the backend:

    plan                 variables of unit i (build)          unit i's step (inside a replica)
    DevicePlan           tf.device(devices[r][k]), remapped    tf.device(devices[r][k]) for the
                         per replica (see remap_variables)     replica r that traces the step
    TPUPlan              strategy.extended                     replica context's
                         .experimental_logical_device(k)       experimental_logical_device(k)

A Placement (plan, k_1..k_L) is the value a Pipeline is built with
(`Pipeline(..., placement=runtime.placement(cores))`); it holds no ambient state.
`balance` chooses k_i from per-unit costs (sideways_tf.costs): contiguous blocks,
so neighbours, which talk every step, stay together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Sequence

from sideways_tf import backend
from sideways_tf.backend import tf


def resolve_device(device: str | None) -> str | None:
    """Returns the full name of a logical device, or raises naming the ones that exist.

    Accepts "CPU:1", "/CPU:1", "/device:GPU:0", "gpu:0" or a full
    "/job:.../device:TPU:3" name. None means "wherever TensorFlow puts it".
    """
    if device is None:
        return None
    if not backend.is_tensorflow():
        raise ValueError(
            f"Unit(device={device!r}): a unit's own device is a tf.device placement, on the "
            "TensorFlow backend. On JAX leave device=None (one jax.jit runs the whole clip on "
            "the default device)."
        )
    try:
        spec = tf.DeviceSpec.from_string(device if device.startswith("/") else "/" + device)
    except ValueError as e:
        raise ValueError(f"Device {device!r} is not a device name like 'CPU:0' or 'GPU:1'.") from e
    logical = tf.config.list_logical_devices()
    for d in logical:
        have = tf.DeviceSpec.from_string(d.name)
        if (
            spec.device_type is not None
            and have.device_type == spec.device_type.upper()
            and have.device_index == (spec.device_index or 0)
            and (spec.job is None or spec.job == have.job)
            and (spec.task is None or spec.task == have.task)
        ):
            return d.name
    names = ", ".join(d.name.split("device:")[-1] for d in logical)
    raise ValueError(
        f"Device {device!r} does not exist here; this process has {names}. Pick one of "
        "those, or, to stand in for several devices on one CPU, configure logical devices "
        "first: tf.config.set_logical_device_configuration(cpu, [LogicalDeviceConfiguration()] * n)."
    )


def device_scope(device: str | None):
    """tf.device(device) (on JAX a no-op: see Plan), or a no-op for None."""
    return backend.device_scope(device)


def accelerators() -> list[str]:
    """Every GPU, else every TPU core, else every logical CPU of this process."""
    for kind in ("GPU", "TPU", "CPU"):
        found = [d.name for d in tf.config.list_logical_devices(kind)]
        if found:
            return found
    return []


def round_robin(num_units: int, devices: list[str] | None = None) -> list[str | None]:
    """Spreads units over devices in contiguous blocks (unit i on devices[i * n // L]).

    Contiguous blocks keep neighbouring units, which talk every step, together.
    With no devices given, uses every GPU, else every TPU core, else all on one CPU.
    """
    if devices is None:
        found = [d for d in accelerators() if "CPU" not in d]
        if not found:
            return [None] * num_units
        devices = found
    devices = [resolve_device(d) for d in devices]
    return [devices[contiguous_core(i, num_units, len(devices))] for i in range(num_units)]


def contiguous_core(i: int, num_units: int, num_cores: int) -> int:
    """Core of unit i (0-based) when L units are cut into C equal contiguous blocks."""
    return i * num_cores // num_units


def balance(costs: Sequence[float], num_cores: int) -> list[int]:
    """Core index per unit: contiguous blocks that minimise the busiest core's cost.

    Sideways' step time tends to the slowest core's forward + VJP, so this is the
    linear-partition problem: cut costs c_1..c_L into at most C contiguous blocks
    minimising max_b sum_{i in b} c_i (exact dynamic programme, O(L^2 C)). Ties go
    to the cut whose blocks are most even, then to the earliest cut.
    """
    costs = [float(c) for c in costs]
    n = len(costs)
    if num_cores < 1:
        raise ValueError(f"num_cores must be >= 1, got {num_cores}.")
    if any(c < 0 for c in costs):
        raise ValueError(f"Unit costs must be >= 0, got {costs}.")
    cores = min(num_cores, n)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)

    # best[b][i]: (max load, sum of squared loads) of the first i units in b blocks.
    inf = (float("inf"), float("inf"))
    best = [[inf] * (n + 1) for _ in range(cores + 1)]
    cut = [[0] * (n + 1) for _ in range(cores + 1)]
    best[0][0] = (0.0, 0.0)
    for b in range(1, cores + 1):
        for i in range(b, n + 1):
            for j in range(b - 1, i):
                load = prefix[i] - prefix[j]
                prev = best[b - 1][j]
                cand = (max(prev[0], load), prev[1] + load * load)
                if cand < best[b][i]:
                    best[b][i], cut[b][i] = cand, j
    blocks = min(range(1, cores + 1), key=lambda b: best[b][n])
    out, i = [0] * n, n
    for b in range(blocks, 0, -1):
        j = cut[b][i]
        out[j:i] = [b - 1] * (i - j)
        i = j
    return out


def check_cores(cores: Sequence[int], num_units: int, num_cores: int, binding: str) -> list[int]:
    """Validates one core index per unit; `binding` names the gin setting in errors."""
    cores = [int(k) for k in cores]
    if len(cores) != num_units:
        raise ValueError(
            f"{binding} gives {len(cores)} core indices for a pipeline of {num_units} units; "
            f"give one per unit, e.g. {tuple(contiguous_core(i, num_units, num_cores) for i in range(num_units))}, "
            "or 'auto'."
        )
    bad = [k for k in cores if not 0 <= k < num_cores]
    if bad:
        raise ValueError(
            f"{binding} = {tuple(cores)} has core index {bad[0]}, outside 0..{num_cores - 1} "
            f"(cores per replica C={num_cores}); use indices below C or raise "
            "runtime.cores_per_replica."
        )
    return cores


# -- Plans ---------------------------------------------------------------------------


class Plan:
    """Maps a unit's logical core index to where its variables live and its step runs."""

    num_cores: int = 1

    def variable_scope(self, core: int):
        """Context for creating the variables of a unit on `core`."""
        return contextlib.nullcontext()

    def run_scope(self, core: int):
        """Context for running a unit's ops on `core`, inside a replica (or without one)."""
        return contextlib.nullcontext()

    def device(self, core: int, replica: int = 0) -> str | None:
        """The device name of `core` in `replica`, where the backend has one."""
        return None


class DevicePlan(Plan):
    """tf.device placement: devices[r][k] is core k of replica r (CPUs or GPUs).

    Without a strategy there is one replica. Under MirroredStrategy or
    MultiWorkerMirroredStrategy each replica spans C devices; the replica whose
    main device is devices[r][0]... is found from the replica context at trace time.
    Variables are re-mapped per replica by `remap_variables` (entered outside the
    strategy's scope by sideways_tf.distribute.Runtime.scope()).
    """

    def __init__(self, devices: Sequence[Sequence[str | None]], main_devices=None):
        self.devices = [list(row) for row in devices]
        widths = {len(row) for row in self.devices}
        if len(widths) != 1:
            raise ValueError(f"Every replica needs the same number of cores, got {self.devices}.")
        self.num_cores = widths.pop()
        # The strategy's device for each replica (its variables' default home).
        self.main_devices = list(main_devices) if main_devices else [r[0] for r in self.devices]
        self._local = threading.local()

    @classmethod
    def single(cls, devices: Sequence[str | None]) -> DevicePlan:
        """One replica whose core k is devices[k]."""
        return cls([list(devices)])

    def device(self, core: int, replica: int = 0) -> str | None:
        return self.devices[replica][core]

    def _replica(self) -> int:
        """Index of the replica being traced (0 outside a replica or with one replica)."""
        if len(self.devices) == 1:
            return 0
        ctx = tf.distribute.get_replica_context()
        if ctx is None:  # cross-replica context: replica 0's devices
            return 0
        return _local_replica_index(ctx, len(self.devices))

    def variable_scope(self, core: int):
        if len(self.devices) == 1:
            return device_scope(self.devices[0][core])
        return self._creating(core)

    @contextlib.contextmanager
    def _creating(self, core: int):
        previous = getattr(self._local, "core", None)
        self._local.core = core
        try:
            yield
        finally:
            self._local.core = previous

    def run_scope(self, core: int):
        return device_scope(self.devices[self._replica()][core])

    def building_core(self) -> int | None:
        """The core of the unit whose variables are being created, if any."""
        return getattr(self._local, "core", None)

    def target_device(self, current: str | None) -> str | None:
        """Where a variable the strategy is creating on `current` should live instead.

        A component for replica r (on its main device) goes to devices[r][k] for the
        unit being built on core k. Slots colocated with an already re-mapped
        variable, and anything created outside a unit's build, stay where they are.
        """
        core = self.building_core()
        if core is None or current is None:
            return current
        spec = _canonical(current)
        for r, main in enumerate(self.main_devices):
            if main is not None and _canonical(main) == spec:
                return self.devices[r][core]
        return current


def _canonical(device: str) -> str:
    spec = tf.DeviceSpec.from_string(device)
    return spec.replace(device_type=(spec.device_type or "").upper(), replica=None).to_string()


def _local_replica_index(ctx, local_replicas: int) -> int:
    """This replica's index among the process's replicas (ids are worker-major)."""
    replica_id = tf.get_static_value(ctx.replica_id_in_sync_group)
    if replica_id is None:
        raise ValueError(
            "The replica id is not known while tracing; units of a replica spanning several "
            "devices can only be placed under MirroredStrategy or MultiWorkerMirroredStrategy."
        )
    return int(replica_id) % local_replicas


@contextlib.contextmanager
def remap_variables(plan: DevicePlan):
    """Puts each replica's copy of a unit's variables on that replica's core k.

    MirroredStrategy creates one component per replica inside
    `tf.device(main device)` and ignores an enclosing tf.device. This scope, entered
    OUTSIDE strategy.scope(), is the creator the strategy calls per component, so it
    can move the component to plan.target_device(main device). Keras' optimizer
    creates slots colocated with their variable, so they follow it. The one place
    that relies on the order in which TensorFlow calls variable creators; tested in
    tests/test_distribute.py.
    """

    def creator(next_creator, **kwargs):
        if plan.building_core() is None:
            return next_creator(**kwargs)
        with device_scope(plan.target_device(_current_device())):
            return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        yield


def _current_device() -> str | None:
    """The device an eager op would run on now: the strategy's per-replica tf.device."""
    if not tf.executing_eagerly():
        return None  # variables are created eagerly (before any trace); leave others be
    return tf.zeros(()).device or None


class TPUPlan(Plan):
    """TPU logical cores: a replica spans C cores of a TPUStrategy device assignment.

    strategy must be a tf.distribute.TPUStrategy built with a DeviceAssignment of
    computation_shape covering C cores (sideways_tf.distribute.tpu_device_assignment).
    """

    def __init__(self, strategy, num_cores: int, replica_context=None):
        self.strategy, self.num_cores = strategy, int(num_cores)
        self._replica_context = replica_context or tf.distribute.get_replica_context

    def variable_scope(self, core: int):
        if self.num_cores == 1:
            return contextlib.nullcontext()
        return self.strategy.extended.experimental_logical_device(core)

    def run_scope(self, core: int):
        ctx = self._replica_context()
        if self.num_cores == 1 or not hasattr(ctx, "experimental_logical_device"):
            return contextlib.nullcontext()  # outside a TPU replica: the host's default
        return ctx.experimental_logical_device(core)


# -- A pipeline's placement ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a pipeline's units go: a plan and the logical core k_i of each unit i.

    Pass it to Pipeline(..., placement=...) (every model factory takes one); a
    Runtime makes it with `runtime.placement(cores)`. Without one, each unit stays
    on its own Unit(device=...).

    plan:  realises a core index as a device or TPU logical core (DevicePlan, TPUPlan).
    cores: k_1..k_L, one per unit bottom first, each in 0..plan.num_cores-1; None cuts
           the L units into plan.num_cores equal contiguous blocks (contiguous_core).
           Checked against the pipeline's units when it is built.
    """

    plan: Plan
    cores: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.cores is not None:  # any sequence in, a tuple kept: the value cannot change
            object.__setattr__(self, "cores", tuple(int(k) for k in self.cores))

    def cores_for(self, num_units: int) -> list[int]:
        """k_i for units 1..L, checked (errors name the gin binding runtime.placement)."""
        num_cores = self.plan.num_cores
        cores = self.cores
        if cores is None:
            cores = [contiguous_core(i, num_units, num_cores) for i in range(num_units)]
        return check_cores(cores, num_units, num_cores, "runtime.placement")
