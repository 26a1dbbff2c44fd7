"""Stall diagnostics: a Sideways run that is not learning says so, and what usually helps.

Sideways trains unit i with a message built from frame t - 2(L - i) applied at its
activation of frame t (algorithm.md s.3, P3); when frames change fast, or a unit's
Jacobian changes a lot between frames, that gradient can point away from the true
one and a unit, or the whole run, stops learning while bptt on the same network
learns. Nothing crashes: the loss just stays where it started. Two signs, read from
figures the training loops already have:

  fidelity  unit i's gradient fidelity, cos(g_theta_i sideways, g_theta_i bptt) on the
            same clip and parameters (Engine.gradient_fidelity, sampled every
            `fidelity_every` steps), stays below `fidelity_floor` for `patience`
            samples in a row;
  chance    after `after_steps` steps, the training loss (mean of the last `window`
            steps) is still within `margin` of the task's chance loss where it has one
            (Classification: ln C), and within `margin` of (or above) the first
            window's mean: near chance and not on its way down.

Each sign warns once per run (per unit for fidelity), naming the unit, its fidelity
and what usually helps. Only modes whose gradients are Sideways' approximation are
watched (Mode.approximate: sideways, skip_sideways); bptt and frame_bp are the checks.
`StallWatch` is plain Python over floats (testable without TensorFlow); the CLI's loop
(train.stall_after, train.fidelity_floor) and SidewaysModel.fit
(compile(stall_after=..., fidelity_floor=...)) feed it and print what it returns.
"""

from __future__ import annotations

import collections
import dataclasses
import math

ADVICE = (
    "What usually helps: a topology with skips (skip(2): shorter paths, fresher messages), "
    "fusion='concat' or 'gate' instead of 'sum', a lower learning rate, frames that change "
    "less between steps (a smaller clip stride), or fewer units; train the same network "
    "with mode='bptt' once to check that it can learn at all (if bptt stalls too, the "
    "network or the data is the problem, not Sideways)."
)


@dataclasses.dataclass
class StallWatch:
    """Watches one run's loss and per-unit fidelity; returns the warnings to show.

    mode: the Mode's name; approximate: whether its gradients are Sideways' (else
    nothing is watched); units: the units' names, bottom first; chance_loss: the
    task's loss of a model that knows nothing (None: the first window's loss).
    after_steps: steps before the loss is judged (0: the loss is not watched);
    fidelity_floor: the cosine below which a unit's gradient counts as lost;
    patience: fidelity samples in a row below the floor before a warning; margin:
    relative distance from the reference within which the loss "has not moved";
    window: steps averaged for the loss.
    """

    mode: str
    approximate: bool
    units: list[str]
    chance_loss: float | None = None
    after_steps: int = 200
    fidelity_floor: float = 0.1
    patience: int = 3
    margin: float = 0.05
    window: int = 20

    def __post_init__(self):
        if self.after_steps < 0:
            raise ValueError(f"stall_after must be >= 0 steps (0: off), got {self.after_steps}.")
        if not -1.0 <= self.fidelity_floor <= 1.0:
            raise ValueError(
                f"fidelity_floor is a cosine, in [-1, 1] (-1: off), got {self.fidelity_floor}."
            )
        if self.patience < 1 or self.window < 1:
            raise ValueError("patience and window must be at least 1.")
        self._recent = collections.deque(maxlen=self.window)
        self._first: float | None = None  # the first full window's mean loss
        self._low = [0] * len(self.units)  # fidelity samples in a row below the floor
        self._warned_units: set[int] = set()
        self._warned_loss = False
        self._losses = 0

    def state(self) -> dict:
        """What has been warned about: {"stalled_units": [1-based unit], "loss_stalled": bool}."""
        return {"stalled_units": sorted(self._warned_units), "loss_stalled": self._warned_loss}

    def fidelity(self, step: int, cosines) -> list[str]:
        """Feeds one fidelity sample (cosine per unit, bottom first); returns new warnings."""
        if not self.approximate:
            return []
        cosines = [float(c) for c in cosines]
        if len(cosines) != len(self.units):
            raise ValueError(f"{len(cosines)} fidelities for {len(self.units)} units.")
        warnings = []
        for i, c in enumerate(cosines):
            self._low[i] = self._low[i] + 1 if c < self.fidelity_floor else 0
            if self._low[i] >= self.patience and i + 1 not in self._warned_units:
                self._warned_units.add(i + 1)
                warnings.append(
                    f"step {step}: unit {i + 1} ({self.units[i]!r}) has had gradient fidelity "
                    f"below {self.fidelity_floor:g} for {self.patience} samples in a row (now "
                    f"{c:.3f}: the cosine of its {self.mode} gradient with bptt's on the same "
                    f"clip; 1 is exact, 0 is unrelated): it is barely learning. {ADVICE}"
                )
        return warnings

    def loss(self, step: int, value: float) -> list[str]:
        """Feeds one step's training loss; returns a warning once the loss has stalled."""
        if not self.approximate or not self.after_steps or not math.isfinite(value):
            return []
        self._recent.append(float(value))
        self._losses += 1
        if self._first is None and len(self._recent) == self.window:
            self._first = sum(self._recent) / self.window
        if self.chance_loss is not None:
            reference, what = self.chance_loss, "chance (the loss of a model that knows nothing)"
        else:
            reference, what = self._first, f"its first {self.window} steps"
        if self._warned_loss or self._losses < self.after_steps or not reference or reference < 0:
            return []
        now = sum(self._recent) / len(self._recent)
        if now < reference * (1.0 - self.margin):
            return []
        if self._first is not None and now < self._first * (1.0 - self.margin):
            return []  # near chance, but on its way down from where it started: learning
        self._warned_loss = True
        return [
            f"step {step}: after {self._losses} steps of {self.mode}, the training loss "
            f"({now:.4g}, mean of the last {len(self._recent)} steps) has not moved from "
            f"{what}, {reference:.4g}. Read the per-unit gradient fidelity (logs "
            "'fidelity/unit_i', TensorBoard fidelity/cosine) to see which units have lost "
            f"their gradient. {ADVICE}"
        ]


__all__ = ["ADVICE", "StallWatch"]
