"""Schedule simulator: predicted time per clip of frame_bp, GPipe and Sideways.

Pure Python (no TensorFlow), so it runs anywhere and its arithmetic is testable.
Notation of algorithm.md: units i = 1..L, edges j -> i (j = 0 is the input frame),
B clips per replica, K frames per clip, one update per clip. Per unit, on one
device and for one step of a batch of B frames:

    f_i   forward time of C_i then H_i (the top unit includes head and loss)
    b_i   VJP time: (g_theta_i, r_{i->j}) from m_i
    s_i   bytes of a_i[t] [B, *out_i]; the message m_i[t] has the same shape
    p_i   bytes of theta_i

A placement puts unit i on core k_i of D cores per replica; R replicas each run
the whole pipeline on their own B clips. An edge j -> i with k_j != k_i crosses
devices; sending s_j bytes over it costs

    x_ji = latency + s_j / bandwidth.

Each device has its own full-duplex link: per step it sends an activation a_j for
every crossing edge out of it and a message r_{i->j} for every crossing edge into
it, so its send time is X_d = sum of x_ji over the crossing edges that touch d.
The input edge (j = 0) is fed by the input pipeline and costs nothing here.

Schedules (time per clip T, excluding the all-reduce A added to all three):

  frame_bp   synchronised per-frame BP; the K frames go as one batch of B*K, whose
             cost is taken as K times that of B. The forward runs through the devices
             in order and the backward back again; nothing overlaps:
                 T = K sum_i (f_i + b_i) + 2 sum_{crossing j->i} (latency + K s_j / bw)
  gpipe      the K frames as K micro-batches of B through the D stages (F_d, B_d:
             forward, backward time of the units on d); K + D - 1 slots of the
             slowest stage forward, then as many backward (the bubble):
                 T = (K + D - 1) (max_d slot^f_d + max_d slot^b_d)
             slot^f_d = F_d (+) X^f_d, X^f_d the activations d sends; slot^b_d
             likewise with the messages.
  sideways   every step each device runs its units' forward and VJP; units read only
  (skip_)    the previous step's buffers, so devices do not wait on each other within
             a step (algorithm.md s.7):
                 T = K max_d (C_d (+) X_d),   C_d = sum_{k_i = d} (f_i + b_i)

  (+) is max(.,.) when transfers overlap compute (overlap=True) and + otherwise.

All-reduce, once per update (ring over R replicas, each device of a replica
reducing its own units' parameters at once, not overlapped with compute):

    A = max_d 2 (R - 1) / R * P_d / allreduce_bandwidth,   P_d = sum_{k_i = d} p_i

Outputs: time per clip T + A, frames/s = R B K / (T + A), and utilisation = the
compute the schedule does, K sum_i (f_i + b_i), over D (T + A) device-seconds.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

INF = math.inf


@dataclasses.dataclass(frozen=True)
class Setup:
    """What the simulator needs: per-unit costs, edges, placement and the machine.

    forward, backward: f_i, b_i in seconds per step of B frames, bottom unit first.
    output_bytes:      s_i, bytes of a_i[t] (and of m_i[t]) at batch B.
    param_bytes:       p_i, bytes of theta_i (the top unit includes the head).
    edges:             (j, i) pairs, 0 <= j < i <= L; j = 0 is the input frame.
    cores:             k_i in 0..D-1 per unit; D = max k_i + 1 devices per replica.
    batch_size, frames: B clips per replica, K frames per clip.
    replicas:          R copies of the pipeline, data parallel.
    link_bandwidth, link_latency: bytes/s and seconds per cross-device transfer.
    allreduce_bandwidth: bytes/s of the ring all-reduce between replicas.
    overlap:           whether transfers overlap compute (gpipe and sideways).
    """

    forward: Sequence[float]
    backward: Sequence[float]
    output_bytes: Sequence[float]
    param_bytes: Sequence[float]
    edges: Sequence[tuple[int, int]]
    cores: Sequence[int]
    batch_size: int
    frames: int
    replicas: int = 1
    link_bandwidth: float = INF
    link_latency: float = 0.0
    allreduce_bandwidth: float = INF
    overlap: bool = True

    def __post_init__(self):
        for name in ("forward", "backward", "output_bytes", "param_bytes", "cores"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "edges", tuple((int(j), int(i)) for j, i in self.edges))
        n = len(self.forward)
        if n == 0:
            raise ValueError("Setup needs at least one unit (forward has no entries).")
        for name in ("backward", "output_bytes", "param_bytes", "cores"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"Setup.{name} has {len(getattr(self, name))} entries for {n} units; "
                    "give one per unit, bottom first."
                )
        bad = [(j, i) for j, i in self.edges if not 0 <= j < i <= n]
        if bad:
            raise ValueError(f"Edges {bad} are not (j, i) with 0 <= j < i <= L = {n}.")
        if any(k < 0 for k in self.cores):
            raise ValueError(f"Core indices must be >= 0, got {self.cores}.")
        if min(self.batch_size, self.frames, self.replicas) < 1:
            raise ValueError("batch_size, frames and replicas must be >= 1.")
        if min(self.link_bandwidth, self.allreduce_bandwidth) <= 0 or self.link_latency < 0:
            raise ValueError("Bandwidths must be > 0 (math.inf for free) and latency >= 0.")

    @property
    def num_units(self) -> int:
        return len(self.forward)

    @property
    def num_devices(self) -> int:
        """D: cores per replica (unused core indices below the largest still count)."""
        return max(self.cores) + 1

    def crossing(self) -> list[tuple[int, int]]:
        """Edges j -> i (1-based units, j >= 1) whose ends sit on different devices."""
        return [(j, i) for j, i in self.edges if j > 0 and self.cores[j - 1] != self.cores[i - 1]]

    def transfer(self, j: int, frames: int = 1) -> float:
        """x_ji: seconds to send `frames` steps' worth of a_j (or m_j) over one link."""
        return self.link_latency + frames * self.output_bytes[j - 1] / self.link_bandwidth

    def per_device(self, values: Sequence[float]) -> list[float]:
        """Sum of a per-unit quantity over the units of each device d = 0..D-1."""
        out = [0.0] * self.num_devices
        for k, v in zip(self.cores, values):
            out[k] += v
        return out

    def sends(self, activations: bool = True, messages: bool = True) -> list[float]:
        """X_d: per step, the send time of each device (activations up, messages down)."""
        out = [0.0] * self.num_devices
        for j, i in self.crossing():
            if activations:
                out[self.cores[j - 1]] += self.transfer(j)
            if messages:
                out[self.cores[i - 1]] += self.transfer(j)
        return out

    @property
    def compute(self) -> float:
        """K sum_i (f_i + b_i): the work of one clip on one replica, in device-seconds."""
        return self.frames * (sum(self.forward) + sum(self.backward))


class Prediction(NamedTuple):
    """One schedule's prediction for one update (a clip of K frames on every replica)."""

    schedule: str
    clip_time: float  # s per update, T + A
    frames_per_second: float  # R B K / (T + A)
    utilisation: float  # K sum (f + b) / (D (T + A))
    transfer: float  # s of T spent on links that compute does not hide
    allreduce: float  # A, s


def allreduce_time(s: Setup) -> float:
    """A = max_d 2 (R - 1) / R * P_d / bw: ring all-reduce of each device's parameters."""
    if s.replicas == 1:
        return 0.0
    share = 2.0 * (s.replicas - 1) / s.replicas
    return max(share * p / s.allreduce_bandwidth for p in s.per_device(s.param_bytes))


def _combine(compute: float, transfer: float, overlap: bool) -> float:
    return max(compute, transfer) if overlap else compute + transfer


def _predict(s: Setup, schedule: str, body: float, hidden: float) -> Prediction:
    """Wraps a schedule's T (and its pure-compute part) with the all-reduce."""
    a = allreduce_time(s)
    total = body + a
    return Prediction(
        schedule=schedule,
        clip_time=total,
        frames_per_second=s.replicas * s.batch_size * s.frames / total,
        utilisation=s.compute / (s.num_devices * total),
        transfer=body - hidden,
        allreduce=a,
    )


def frame_bp(s: Setup) -> Prediction:
    """Synchronised per-frame BP of the clip as one batch of B*K, no overlap (see module doc)."""
    transfers = 2 * sum(s.transfer(j, frames=s.frames) for j, _ in s.crossing())
    return _predict(s, "frame_bp", s.compute + transfers, s.compute)


def gpipe(s: Setup) -> Prediction:
    """K micro-batches (one frame of B clips each) through D stages, then back: the bubble."""
    slots = s.frames + s.num_devices - 1
    fwd, bwd = s.per_device(s.forward), s.per_device(s.backward)
    up, down = s.sends(messages=False), s.sends(activations=False)
    slot_f = max(_combine(c, x, s.overlap) for c, x in zip(fwd, up))
    slot_b = max(_combine(c, x, s.overlap) for c, x in zip(bwd, down))
    return _predict(s, "gpipe", slots * (slot_f + slot_b), slots * (max(fwd) + max(bwd)))


def sideways(s: Setup) -> Prediction:
    """K steps; each step every device runs its units' forward + VJP, then exchanges."""
    work = s.per_device([f + b for f, b in zip(s.forward, s.backward)])
    step = max(_combine(c, x, s.overlap) for c, x in zip(work, s.sends()))
    return _predict(s, "sideways", s.frames * step, s.frames * max(work))


def skip_sideways(s: Setup) -> Prediction:
    """Sideways on a skip topology: the same schedule; the skip edges are in s.edges."""
    return sideways(s)._replace(schedule="skip_sideways")


SCHEDULES: dict[str, Callable[[Setup], Prediction]] = {
    "frame_bp": frame_bp,
    "gpipe": gpipe,
    "sideways": sideways,
    "skip_sideways": skip_sideways,
}


def simulate(s: Setup, schedules: Sequence[str] = ("frame_bp", "gpipe", "sideways")) -> dict:
    """{schedule: Prediction} for the named schedules."""
    unknown = [name for name in schedules if name not in SCHEDULES]
    if unknown:
        raise ValueError(f"Unknown schedules {unknown}; choose from {list(SCHEDULES)}.")
    return {name: SCHEDULES[name](s) for name in schedules}


# -- Building a Setup ------------------------------------------------------------------


def chain(num_units: int) -> list[tuple[int, int]]:
    """Edges of plain Sideways: S(i) = {i - 1}."""
    return [(i - 1, i) for i in range(1, num_units + 1)]


def contiguous(num_units: int, num_devices: int) -> list[int]:
    """Core of each unit when L units are cut into D equal contiguous blocks."""
    return [i * num_devices // num_units for i in range(num_units)]


def best_cut(
    s: Setup, num_devices: int, schedule: Callable[[Setup], Prediction] | None = None
) -> tuple[int, ...]:
    """The contiguous placement into D blocks that minimises `schedule`'s time per clip.

    placement.balance evens out compute only; on a slow link the best cut also
    avoids large activations. Exhaustive over the C(L-1, D-1) cuts (ties: earliest).
    """
    schedule = schedule or sideways
    n = s.num_units
    if not 1 <= num_devices <= n:
        raise ValueError(f"num_devices must be in 1..L = {n}, got {num_devices}.")
    best, best_time = None, INF
    for cuts in itertools.combinations(range(1, n), num_devices - 1):
        cores = [sum(i >= c for c in cuts) for i in range(n)]
        time = schedule(dataclasses.replace(s, cores=cores)).clip_time
        if time < best_time:
            best, best_time = tuple(cores), time
    return best


def from_measured(
    forward: Sequence[float],
    backward: Sequence[float],
    output_bytes: Sequence[float],
    edges: Sequence[tuple[int, int]],
    batch_size: int,
    frames: int,
    cores: Sequence[int] | None = None,
    param_bytes: Sequence[float] | None = None,
    **machine,
) -> Setup:
    """A Setup from measured per-unit forward and VJP times (s per step of B frames).

    cores defaults to every unit on one device; param_bytes to zero (no all-reduce);
    `machine` takes the remaining Setup fields (replicas, link_bandwidth, ...).
    """
    n = len(forward)
    return Setup(
        forward=forward,
        backward=backward,
        output_bytes=output_bytes,
        param_bytes=param_bytes if param_bytes is not None else [0.0] * n,
        edges=edges,
        cores=cores if cores is not None else [0] * n,
        batch_size=batch_size,
        frames=frames,
        **machine,
    )


def from_costs(
    costs: Sequence,
    flops_per_second: float,
    edges: Sequence[tuple[int, int]],
    batch_size: int,
    frames: int,
    cores: Sequence[int] | None = None,
    bytes_per_param: int = 4,
    **machine,
) -> Setup:
    """A Setup from sideways_tf.costs.UnitCost (FLOPs at batch B) and a device's FLOP/s.

    f_i = forward_flops / flops_per_second, b_i = backward_flops / flops_per_second;
    flops_per_second is the sustained figure (peak times utilisation).
    """
    if flops_per_second <= 0:
        raise ValueError(f"flops_per_second must be > 0, got {flops_per_second}.")
    return from_measured(
        forward=[c.forward_flops / flops_per_second for c in costs],
        backward=[c.backward_flops / flops_per_second for c in costs],
        output_bytes=[c.output_bytes for c in costs],
        param_bytes=[c.params * bytes_per_param for c in costs],
        edges=edges,
        batch_size=batch_size,
        frames=frames,
        cores=cores,
        **machine,
    )


__all__ = [
    "Prediction",
    "SCHEDULES",
    "Setup",
    "allreduce_time",
    "best_cut",
    "chain",
    "contiguous",
    "frame_bp",
    "from_costs",
    "from_measured",
    "gpipe",
    "sideways",
    "simulate",
    "skip_sideways",
]
