"""Unit: one stage of a Sideways pipeline, a Keras layer that owns its state.

A unit wraps any Keras layer or block, the module H_i, behind the fusion C_i of
its sources (algorithm.md s.2-3):

    u_i[t] = C_i({ a_j[t-1-d_ji] : j in S(i) })
    a_i[t] = H_i(u_i[t]; theta_i)

Between steps the unit keeps, as non-trainable fixed-shape buffers created in
build() (the static-batch pattern of Keras' stateful RNNs):
    output    a_i[t-1]                              [B, *out] (output_shape_)
    message   m_i[t], the gradient w.r.t. a_i        [B, *out]   (not on the top unit)
    delay_k   a_j[t-1-d], ..., a_j[t-2] for edge k   [d, B, *in_k] (edges with d > 0)
Nothing else: no per-frame history, so the state does not grow with clip length.
Buffers are stored in the unit's compute dtype (bfloat16 / float16 under a
mixed Keras dtype policy, see sideways_tf.precision); parameters stay float32.

A module holding BatchNormalization is refused (at construction, and again at
build for layers a module creates in its build()): u_i[t] is B clips of one
frame, never B*K frames, and the VJP is taken at the unit's current input
(algorithm.md s.3), so batch statistics couple the clips of a batch in ways the
gradient rules do not model (keras.applications ResNet50 at B=2 gave gradient
norms of 1e8-1e10). `allow_batch_norm=True` is the opt-out.
"""

from __future__ import annotations

import contextlib

import keras
from keras import ops

from sideways_tf import backend, placement
from sideways_tf import fusion as fusion_lib


@keras.saving.register_keras_serializable(package="sideways_tf")
class Unit(keras.Layer):
    """A pipeline unit: fusion of its sources, then its module, plus its state buffers.

    Args:
      module: any Keras layer or block (H_i).
      fusion: how several sources are fused: "concat" (the default: it learned
        moving_shapes best under skip_sideways, 0.990 vs 0.805 for "sum", README),
        "sum", "gated" or a Fusion layer. Unused with a single source.
      device: where the unit's parameters, buffers and work live ("GPU:1",
        "CPU:0", ...); None leaves placement to the pipeline's plan (a Runtime's
        logical cores, see sideways_tf.placement) or to TensorFlow.
      delays: extra delay of each incoming edge, in the order of the pipeline's
        topology (set by the Pipeline; one undelayed edge by default).
      has_message: whether the unit receives a gradient message (every unit but
        the top, whose gradient is its fresh loss gradient).
      allow_batch_norm: accept a module that holds BatchNormalization (refused by
        default, see the module docstring; sideways_tf.replace_batch_norm is the fix).
    """

    def __init__(
        self,
        module: keras.Layer,
        fusion: str | fusion_lib.Fusion = "concat",
        device: str | None = None,
        delays: tuple[int, ...] | None = None,
        has_message: bool = True,
        allow_batch_norm: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(module, keras.Layer):
            raise TypeError(
                f"Unit module must be a Keras layer or model, got {type(module).__name__}; "
                "wrap plain functions in keras.layers.Lambda."
            )
        self.allow_batch_norm = bool(allow_batch_norm)
        if not self.allow_batch_norm:
            check_batch_norm(module, f"Unit {self.name!r}")
        if isinstance(fusion, str) and fusion not in fusion_lib.FUSIONS:
            raise ValueError(
                f"Unknown fusion {fusion!r}; choose one of {sorted(fusion_lib.FUSIONS)}."
            )
        self.module = module
        self._fusion_arg = fusion
        self.fusion = None  # Created in build() when the unit has several sources.
        self.device = placement.resolve_device(device)
        self.delays = (0,) if delays is None else tuple(int(d) for d in delays)
        self.has_message = has_message

    # -- Keras layer contract --------------------------------------------------

    def build(self, input_shape):
        """input_shape: one static shape [B, ...] per source, primary first."""
        shapes = [tuple(s) for s in input_shape]
        if len(shapes) != len(self.delays):
            raise ValueError(
                f"Unit {self.name!r} has {len(self.delays)} incoming edges but was built "
                f"with {len(shapes)} source shapes."
            )
        for s in shapes:
            if s[0] is None:
                raise ValueError(
                    f"Unit {self.name!r} needs a static batch size for its state buffers "
                    "(as Keras' stateful RNNs); build the pipeline with batch_size=B."
                )
        with placement.device_scope(self.device):
            if len(shapes) > 1:
                self.fusion = fusion_lib.make_fusion(self._fusion_arg)
                self.fusion.build(shapes)
                in_shape = self.fusion.compute_output_shape(shapes)
            else:
                in_shape = shapes[0]
            if not self.module.built:
                # (first: a keras.Sequential without an Input builds its functional graph here;
                # its direct compute_output_spec passes `training` to layers, e.g. Flatten,
                # whose compute_output_spec takes no such argument)
                self.module.build(in_shape)
            if not self.allow_batch_norm:  # norms a module creates in its build()
                check_batch_norm(self.module, f"Unit {self.name!r}")
            spec = self.module.compute_output_spec(keras.KerasTensor(in_shape, dtype="float32"))
            self.output_shape_ = tuple(spec.shape)
            with _per_replica_buffers():
                self.output_buffer = self._buffer(self.output_shape_, "output")
                self.message_buffer = (
                    self._buffer(self.output_shape_, "message") if self.has_message else None
                )
                self.delay_buffers = [
                    self._buffer((d, *s), f"delay_{k}") if d > 0 else None
                    for k, (d, s) in enumerate(zip(self.delays, shapes))
                ]
        self.source_shapes = shapes

    def _buffer(self, shape, name):
        return self.add_weight(
            shape=shape,
            initializer="zeros",
            trainable=False,
            name=name,
            dtype=self.compute_dtype,
            autocast=False,
        )

    def call(self, inputs, training=None):
        """inputs: list of source activations, primary first. Returns a_i = H_i(C_i(inputs)).

        Inputs are cast to the compute dtype (Keras autocast: float32 frames too), and so
        is the output, whatever the module's own policy, to match the output buffer.
        """
        u = self.fusion(inputs) if self.fusion is not None else inputs[0]
        return ops.cast(self.module(u, training=training), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return self.output_shape_

    def get_config(self):
        config = super().get_config()
        config.update(
            module=keras.saving.serialize_keras_object(self.module),
            fusion=(
                self._fusion_arg
                if isinstance(self._fusion_arg, str)
                else keras.saving.serialize_keras_object(self._fusion_arg)
            ),
            device=self.device,
            delays=self.delays,
            has_message=self.has_message,
            allow_batch_norm=self.allow_batch_norm,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["module"] = keras.saving.deserialize_keras_object(config["module"])
        if isinstance(config["fusion"], dict):
            config["fusion"] = keras.saving.deserialize_keras_object(config["fusion"])
        config["delays"] = tuple(config["delays"])
        return cls(**config)

    # -- State -----------------------------------------------------------------

    @property
    def state_variables(self) -> list:
        """Every buffer this unit carries between steps."""
        bufs = [self.output_buffer, self.message_buffer, *self.delay_buffers]
        return [b for b in bufs if b is not None]

    def reset_state(self):
        """Zeroes every buffer: the start of a new batch of clips."""
        for b in self.state_variables:
            b.assign(ops.zeros(b.shape, b.dtype))

    def load_own_variables(self, store):
        """Keras' loading (load_weights, load_model) of the unit's own variables, its buffers.

        Buffers are state, not parameters: one saved at another batch size (weights saved
        at B=16, loaded at B=1) or not saved starts at zero (load_buffers). The module's
        and the fusion's weights load as Keras loads any layer's.
        """
        load_buffers(self.state_variables, store)


def load_buffers(buffers, store):
    """Buffer k takes entry "k" of a Keras weights store where the shapes agree, and zeros
    where they do not (saved at another batch size B) or where nothing was saved."""
    for k, b in enumerate(buffers):
        saved = store[str(k)] if str(k) in store else None
        fits = saved is not None and tuple(saved.shape) == tuple(b.shape)
        b.assign(saved if fits else ops.zeros(b.shape, b.dtype))


def batch_norm_layers(layer: keras.Layer) -> list[str]:
    """Names of the BatchNormalization layers in a layer, itself included, in any depth.

    Sub-layers of nested models, Sequential blocks and custom layers alike (the layers
    Keras tracks: attributes, lists and dicts of layers).
    """
    found = layer._flatten_layers(include_self=True, recursive=True)
    return [sub.name for sub in found if isinstance(sub, keras.layers.BatchNormalization)]


def check_batch_norm(layer: keras.Layer, owner: str):
    """Raises a ValueError naming the BatchNormalization layers in `layer`, and the fixes.

    owner: how the message names what holds them ("Unit 'unit2'", "'resnet50'").
    """
    found = batch_norm_layers(layer)
    if not found:
        return
    names = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
    raise ValueError(
        f"{owner} holds BatchNormalization ({names}; {len(found)} layers): inside a unit it "
        "normalises over the B clips of one step, never B*K frames, and couples the clips "
        "in ways the gradient rules do not model (gradients blow up). Fix: "
        "model = sw.replace_batch_norm(model) for a functional or Sequential model "
        "(GroupNorm, gamma and beta kept); keras.layers.GroupNormalization instead in your "
        "own block's code; or allow_batch_norm=True (sw.Unit(..., allow_batch_norm=True), "
        "sw.units_from_model(..., allow_batch_norm=True)) if you know what you do."
    )


@contextlib.contextmanager
def _per_replica_buffers():
    """Under a tf.distribute strategy, every replica keeps its own buffers.

    Each replica runs the pipeline on its own clips, so its state is its own:
    buffers are ON_READ variables (one local copy per replica, read and assigned
    locally inside a replica). Parameters stay mirrored. ONLY_FIRST_REPLICA is what
    a read outside a replica returns (TensorBoard's buffer norms).
    """
    if not backend.is_tensorflow() or not backend.tf.distribute.has_strategy():
        yield
        return
    tf = backend.tf

    def creator(next_creator, **kwargs):
        kwargs["synchronization"] = tf.VariableSynchronization.ON_READ
        kwargs["aggregation"] = tf.VariableAggregation.ONLY_FIRST_REPLICA
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        yield
