"""Device placement of pipeline units.

Each unit names a device; its parameters, its state buffers and its share of every
step run there. Per step and edge j -> i one activation goes up and one gradient
message goes down; parameters never move (algorithm.md section 7).
"""

from __future__ import annotations

import contextlib

import tensorflow as tf


def resolve_device(device: str | None) -> str | None:
    """Returns the full name of a logical device, or raises naming the ones that exist.

    Accepts "CPU:1", "/CPU:1", "/device:GPU:0", "gpu:0" or a full
    "/job:.../device:TPU:3" name. None means "wherever TensorFlow puts it".
    """
    if device is None:
        return None
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
    """tf.device(device), or a no-op for None."""
    return tf.device(device) if device else contextlib.nullcontext()


def round_robin(num_units: int, devices: list[str] | None = None) -> list[str | None]:
    """Spreads units over devices in contiguous blocks (unit i on devices[i * n // L]).

    Contiguous blocks keep neighbouring units, which talk every step, together.
    With no devices given, uses every GPU, else every TPU core, else all on one CPU.
    """
    if devices is None:
        for kind in ("GPU", "TPU"):
            found = [d.name for d in tf.config.list_logical_devices(kind)]
            if found:
                devices = found
                break
        else:
            return [None] * num_units
    devices = [resolve_device(d) for d in devices]
    return [devices[i * len(devices) // num_units] for i in range(num_units)]
