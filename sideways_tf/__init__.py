"""sideways_tf: Sideways and Skip-Sideways training of video models in TensorFlow/Keras.

Public API:
  Unit, Pipeline                     the network and its state (units.py, pipeline.py)
  SumFusion, ConcatFusion, GatedFusion  skip integrators (fusion.py)
  parse_topology, Topology, Edge     edges between units (topology.py)
  Engine, MODES, gradient_fidelity   the one update function (engine.py)
  make_runtime, Runtime              strategies, replicas, units on cores (distribute.py)
"""

from sideways_tf.distribute import Runtime, make_runtime
from sideways_tf.engine import MODES, Engine, gradient_fidelity
from sideways_tf.fusion import ConcatFusion, GatedFusion, SumFusion
from sideways_tf.pipeline import Pipeline, PipelineState
from sideways_tf.topology import Edge, Topology, parse_topology
from sideways_tf.units import Unit

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "ConcatFusion",
    "Edge",
    "Engine",
    "GatedFusion",
    "Pipeline",
    "PipelineState",
    "Runtime",
    "SumFusion",
    "Topology",
    "Unit",
    "gradient_fidelity",
    "make_runtime",
    "parse_topology",
]
