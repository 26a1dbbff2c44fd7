"""sideways_tf: Sideways and Skip-Sideways training of video models in TensorFlow/Keras.

Public API:
  Unit, Pipeline                     the network and its state (units.py, pipeline.py)
  SumFusion, ConcatFusion, GatedFusion  skip integrators (fusion.py)
  parse_topology, Topology, Edge     edges between units (topology.py)
  Engine, MODES, gradient_fidelity   the one update function (engine.py)
  SidewaysModel                      a keras.Model: compile / fit / evaluate / predict / save
  StopOnNonFinite                    a callback: stop fit after N skipped (NaN/Inf) updates
  units_from_model, replace_batch_norm  your own functional model as units (cut.py)
  sideways_tf.modes, sideways_tf.tasks   Mode and Task values (modes.py, tasks/)
  sideways_tf.export                 the streaming SavedModel: export.export(model, dir, batch_size=1)
  sideways_tf.online                 learning on one stream: online_stream (in-stream before update), held_out
  sideways_tf.diagnostics            StallWatch: a Sideways run that stalls warns, naming the unit
  Classification, FutureFrames       the tasks (gin: train.task = @Classification()); FrameLoss: the older name of FutureFrames
  make_runtime, Runtime              strategies, replicas, units on cores (distribute.py)
  sideways_tf.precision              mixed precision: policy_scope, loss_scaling
"""

import importlib

from sideways_tf import config_files as _config_files

_config_files.register()  # gin can open the shipped configs: include 'sideways_tf:base.gin'

# Names load on first use (PEP 562), so that `import sideways_tf.cli` stays light
# until the command line is parsed (TensorFlow is imported then).
_EXPORTS = {
    "SidewaysModel": "keras_model",
    "StopOnNonFinite": "keras_model",
    "units_from_model": "cut",
    "replace_batch_norm": "cut",
    "valid_cuts": "cut",
    "Runtime": "distribute",
    "make_runtime": "distribute",
    "MODES": "engine",
    "Engine": "engine",
    "gradient_fidelity": "engine",
    "ConcatFusion": "fusion",
    "GatedFusion": "fusion",
    "SumFusion": "fusion",
    "FrameLoss": "tasks",
    "Classification": "tasks",
    "FutureFrames": "tasks",
    "tasks": None,
    "modes": None,
    "export": None,
    "online": None,
    "diagnostics": None,
    "Pipeline": "pipeline",
    "PipelineState": "pipeline",
    "Edge": "topology",
    "Topology": "topology",
    "parse_topology": "topology",
    "Unit": "units",
}


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"sideways_tf.{_EXPORTS[name] or name}")
        value = module if _EXPORTS[name] is None else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sideways_tf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))


__version__ = "0.1.0"

__all__ = [
    "MODES",
    "ConcatFusion",
    "Edge",
    "Engine",
    "Classification",
    "FrameLoss",
    "FutureFrames",
    "GatedFusion",
    "Pipeline",
    "PipelineState",
    "Runtime",
    "SidewaysModel",
    "StopOnNonFinite",
    "SumFusion",
    "Topology",
    "Unit",
    "gradient_fidelity",
    "make_runtime",
    "parse_topology",
    "replace_batch_norm",
    "units_from_model",
    "valid_cuts",
]
