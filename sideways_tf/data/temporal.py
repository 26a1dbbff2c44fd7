"""Temporal tasks that need no labels: the label is what was done to the clip's time.

  arrow   arrow of time, 2 classes: the clip played forward (0) or reversed (1)
  speed   playback speed, 3 classes: frames at stride 1, 2 or 4 times the sampling
          stride s (labels 0, 1, 2: "x1", "x2", "x4")

Any video is data for them: the input pipeline makes the label from the frame
indices it picks (sampling.py for the DMVR records of a folder and every
ClipSampling reader, `clip_sampling.temporal_task`; moving_shapes.py,
`moving_shapes_dataset.temporal_task`). One clip of class y covers a window of

    W = (K - 1) * s_max * s + 1 frames     (s_max = 1 for arrow, 4 for speed)

and takes K frames of it at stride v_y * s, centred in the window, in reverse order
where the class is reversed:

    t_k = w_0 + c_y + k * v_y * s,    c_y = ((W - 1) - (K - 1) * v_y * s) // 2,
    k = K-1, ..., 0 for a reversed class (arrow's 1), k = 0, ..., K-1 otherwise.

Training draws one window (w_0 uniform) and one class per clip. Evaluation is fixed,
with no random draw, so every mode is scored on the same clips: each evaluation window
(`num_eval_clips`, evenly spaced) appears once per class, a clip and its reverse
(arrow), the same centre at the three speeds (speed).

The per-frame ceiling: a per-frame network whose logits are averaged over the clip's
frames (frame_bp) gives a clip and its reverse the same prediction (the same frames,
summed in the other order), so over evaluation's pairs its arrow accuracy is exactly
1/2, whatever it learnt. On speed the frames differ between classes, so 1/3 is the
chance level a per-frame model is held to only as far as single frames do not tell
the speeds apart (they do not on moving_shapes; real footage can leak through content,
e.g. a wider window crossing a cut).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TemporalTask:
    """A label made from time: per class y, the speed v_y (a stride multiple) and whether
    the clip is reversed; `per_frame_ceiling` is what a per-frame model is held to."""

    name: str
    class_names: tuple[str, ...]
    speeds: tuple[int, ...]  # v_y: the class's stride, in multiples of the sampling stride
    reversed: tuple[bool, ...]  # the class plays the clip backwards
    per_frame_ceiling: float

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def window(self, num_frames: int, stride: int) -> int:
        """W, frames covered by one clip's window: (K - 1) * max(v) * stride + 1."""
        return (num_frames - 1) * max(self.speeds) * stride + 1

    def clip_offsets(self, num_frames: int, stride: int) -> np.ndarray:
        """int32 [num_classes, K]: the frames of class y's clip, from the window's start."""
        window = self.window(num_frames, stride)
        rows = []
        for speed, backwards in zip(self.speeds, self.reversed):
            step = speed * stride
            centre = ((window - 1) - (num_frames - 1) * step) // 2
            row = centre + np.arange(num_frames) * step
            rows.append(row[::-1] if backwards else row)
        return np.stack(rows).astype(np.int32)


TEMPORAL_TASKS = {
    "arrow": TemporalTask(
        "arrow",
        ("forward", "reversed"),
        speeds=(1, 1),
        reversed=(False, True),
        per_frame_ceiling=1 / 2,
    ),
    "speed": TemporalTask(
        "speed",
        ("x1", "x2", "x4"),
        speeds=(1, 2, 4),
        reversed=(False, False, False),
        per_frame_ceiling=1 / 3,
    ),
}


def get(name: str | None, binding: str = "temporal_task") -> TemporalTask | None:
    """The TemporalTask called `name` (None: none); raises naming the binding and the choices."""
    if name is None:
        return None
    if name not in TEMPORAL_TASKS:
        raise ValueError(
            f"{binding} = {name!r} is not a temporal task; use one of {sorted(TEMPORAL_TASKS)} "
            "(arrow: a clip or its reverse; speed: frames at stride 1, 2 or 4), or None for "
            "the labels the data holds."
        )
    return TEMPORAL_TASKS[name]
