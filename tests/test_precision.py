"""Mixed precision: bf16 / fp16 buffers, float32 parameters, loss scaling, gin, export."""

import json
import os

import gin
import keras
import numpy as np
import pytest
import tensorflow as tf
from toy import conv_pipeline, dense_pipeline, random_clip, train_config

import sideways_tf as sw
from sideways_tf import config_files, distribute, engine, export, precision

MODE_TOPOLOGY = [
    ("frame_bp", "skip(2)"),
    ("bptt", "skip(2)"),
    ("sideways", "chain"),
    ("skip_sideways", "skip(2)"),
]
COMPUTE = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16", "float32": "float32"}


def build(policy, topology="skip(2)", seed=0):
    with precision.policy_scope(policy):
        return conv_pipeline(topology=topology, seed=seed)


def optimizer_for(policy, optimizer, initial_scale=2.0**15):
    if policy == "mixed_float16":
        return precision.loss_scaling(optimizer, initial_scale=initial_scale)
    return optimizer


def losses(policy, mode, topology, steps, seed=0):
    """Training losses of a tiny conv pipeline, one fixed clip (it can be overfitted)."""
    pipeline = build(policy, topology, seed)
    eng = sw.Engine(pipeline, mode, optimizer_for(policy, keras.optimizers.SGD(0.5)))
    clip, labels = random_clip(pipeline, 2 * pipeline.fill_steps + 3, seed=seed)
    out = []
    for _ in range(steps):
        metrics = eng.train_clip(clip, labels)
        assert bool(metrics["applied"])
        out.append(float(metrics["loss"]))
    return np.array(out)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("mode, topology", [("skip_sideways", "skip(2)"), ("bptt", "skip(2)")])
def test_reduced_precision_loss_curve_follows_float32(policy, mode, topology):
    reference = losses("float32", mode, topology, steps=8)
    reduced = losses(policy, mode, topology, steps=8)
    assert reference[-1] < 0.8 * reference[0]  # the curve goes somewhere
    assert reduced[-1] < 0.8 * reduced[0]
    # bfloat16 keeps 8 bits of mantissa (~0.4%), float16 11: within 2% (seen: <0.5%).
    np.testing.assert_allclose(reduced, reference, rtol=0.02, atol=0.005)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_buffers_in_compute_dtype_parameters_slots_and_accumulators_in_float32(policy):
    assert keras.mixed_precision.dtype_policy().name == "float32"
    pipeline = build(policy, topology="skip(2, 1)")  # delayed skips: delay lines too
    assert keras.mixed_precision.dtype_policy().name == "float32"  # restored after
    buffers = pipeline.state_variables()
    kinds = {v.path.rsplit("/", 1)[-1].split("_")[0] for v in buffers}
    assert kinds == {"output", "message", "delay"}
    for v in buffers:
        assert v.dtype == COMPUTE[policy], v.path
    state = pipeline.zero_state()
    for x in (*state.outputs, *state.messages, *state.delays):
        assert x.dtype == COMPUTE[policy]
    eng = sw.Engine(pipeline, "skip_sideways", optimizer_for(policy, keras.optimizers.Adam(1e-3)))
    assert eng.variables and all(v.dtype == "float32" for v in eng.variables)
    # Floating-point optimizer state (slots, learning rate, loss scale) is float32.
    assert {v.dtype for v in eng.optimizer.variables} <= {"float32", "int32", "int64"}
    slots = [v for v in eng.optimizer.variables if "momentum" in v.path or "velocity" in v.path]
    assert len(slots) == 2 * len(eng.variables)
    clip, labels = random_clip(pipeline, 2 * pipeline.fill_steps + 3)
    targets, present = engine.step_targets(pipeline, "skip_sideways", clip, labels)
    grads = engine.sideways_gradients(pipeline, pipeline.zero_state(), clip, targets, present)
    assert all(g.dtype == tf.float32 for gu in grads.grads for g in gu)
    assert grads.loss.dtype == tf.float32 and grads.outputs.dtype == tf.float32
    metrics = eng.train_clip(clip, labels)
    assert bool(metrics["applied"]) and metrics["outputs"].dtype == tf.float32
    for v in buffers:  # written back in the compute dtype, and carrying something
        assert v.dtype == COMPUTE[policy] and np.any(np.asarray(v, np.float32) != 0), v.path


@pytest.mark.parametrize("mode, topology", MODE_TOPOLOGY)
def test_every_mode_updates_every_variable_under_bfloat16(mode, topology):
    pipeline = build("mixed_bfloat16", topology)
    eng = sw.Engine(pipeline, mode, keras.optimizers.SGD(0.1))
    before = [np.array(v) for v in eng.variables]
    metrics = eng.train_clip(*random_clip(pipeline, 2 * pipeline.fill_steps + 3))
    assert bool(metrics["applied"]) and np.isfinite(float(metrics["loss"]))
    for v, old in zip(eng.variables, before):
        new = np.array(v)
        assert new.dtype == np.float32 and np.all(np.isfinite(new)), v.path
        assert np.any(new != old), f"{mode}: {v.path} was not updated"


@pytest.mark.parametrize("mode, topology", MODE_TOPOLOGY)
def test_float16_overflow_halves_the_scale_until_training_proceeds(mode, topology):
    pipeline = build("mixed_float16", topology)
    initial = 2.0**30  # the top's float16 loss gradient alone overflows at this scale
    eng = sw.Engine(
        pipeline, mode, optimizer_for("mixed_float16", keras.optimizers.SGD(0.1), initial)
    )
    before = [np.array(v) for v in eng.variables]
    clip, labels = random_clip(pipeline, 2 * pipeline.fill_steps + 3)
    scales, overflows = [], 0
    for _ in range(30):
        metrics = eng.train_clip(clip, labels)
        scales.append(float(metrics["loss_scale"]))
        if not bool(metrics["applied"]):
            assert bool(metrics["overflow"])  # overflow, not a bad loss
            assert np.isfinite(float(metrics["loss"]))
            overflows += 1
            assert [np.array(v) for v in eng.variables][0].tolist() == before[0].tolist()
        elif overflows:
            break
    assert overflows >= 4
    assert scales[:overflows] == [initial / 2 ** (k + 1) for k in range(overflows)]
    assert bool(metrics["applied"]) and not bool(metrics["overflow"])
    assert float(eng.optimizer.dynamic_scale) == initial / 2**overflows
    for v, old in zip(eng.variables, before):
        new = np.array(v)
        assert np.all(np.isfinite(new)) and np.any(new != old), v.path


def test_a_non_finite_loss_under_loss_scaling_is_not_an_overflow():
    pipeline = build("mixed_float16", "chain")
    eng = sw.Engine(pipeline, "sideways", optimizer_for("mixed_float16", keras.optimizers.SGD(0.1)))
    clip, labels = random_clip(pipeline, 2 * pipeline.fill_steps + 3)
    clip[0, 2] = np.nan
    metrics = eng.train_clip(clip, labels)
    assert not bool(metrics["applied"]) and not bool(metrics["overflow"])
    assert float(metrics["loss_scale"]) == 2.0**15  # the scale is not the culprit


def test_carried_messages_follow_a_changed_loss_scale():
    """Messages are stored times S; when S changes, carried ones are rescaled to the new S."""

    def run(second_scale):
        pipeline = build("mixed_float16", "chain")
        opt = optimizer_for("mixed_float16", keras.optimizers.SGD(0.0), initial_scale=2.0**10)
        eng = sw.Engine(pipeline, "sideways", opt, carry_state=True)
        clip, labels = random_clip(pipeline, 2 * pipeline.fill_steps + 3)
        eng.train_clip(clip, labels)
        eng.optimizer.dynamic_scale.assign(second_scale)
        return eng, eng.train_clip(clip, labels)

    kept, changed = run(2.0**10), run(2.0**6)
    assert float(changed[0].message_scale) == 2.0**6
    np.testing.assert_allclose(
        changed[1]["grad_norms"].numpy(), kept[1]["grad_norms"].numpy(), rtol=2e-2
    )
    message = np.asarray(changed[0].pipeline.units[0].message_buffer, np.float32)
    reference = np.asarray(kept[0].pipeline.units[0].message_buffer, np.float32)
    np.testing.assert_allclose(message * 2.0**4, reference, rtol=2e-2, atol=1e-3)


def test_two_replicas_lower_the_scale_together_and_train_like_one_device():
    def train_until_applied(engine, clip, labels):
        overflows = 0
        while not bool(engine.train_clip(clip, labels)["applied"]):
            overflows += 1
            assert overflows < 40
        return overflows

    def fp16_sgd():
        return precision.loss_scaling(keras.optimizers.SGD(0.1), initial_scale=2.0**30)

    with precision.policy_scope("mixed_float16"):
        one = dense_pipeline("skip(2)", num_units=3, batch=4)
    reference = sw.Engine(one, "skip_sideways", fp16_sgd())
    runtime = distribute.make_runtime(
        strategy="mirrored", devices=["CPU:0", "CPU:1", "CPU:2", "CPU:3"], cores_per_replica=2
    )
    with runtime.scope(), precision.policy_scope("mixed_float16"):
        two = dense_pipeline("skip(2)", num_units=3, batch=2, placement=runtime.placement())
        for v, w in zip(engine.all_variables(two), engine.all_variables(one)):
            v.assign(np.array(w))
        replicated = sw.Engine(two, "skip_sideways", fp16_sgd())
    clip, labels = random_clip(one, 9)
    assert train_until_applied(replicated, clip, labels) == train_until_applied(
        reference, clip, labels
    )
    scale = float(reference.optimizer.dynamic_scale)
    assert scale < 2.0**30
    for part in runtime.strategy.experimental_local_results(
        replicated.optimizer.dynamic_scale.value
    ):
        assert float(part) == scale
    for v, w in zip(replicated.variables, reference.variables):
        for part in runtime.strategy.experimental_local_results(v.value):
            np.testing.assert_allclose(np.array(part), np.array(w), rtol=1e-2, atol=1e-4)


# -- gin: train.precision ------------------------------------------------------------

TINY = config_files.resolve("tiny")


run = train_config


def scalars(directory, tag):
    out = {}
    for name in tf.io.gfile.listdir(directory):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            for v in event.summary.value:
                if v.tag == tag:
                    out[event.step] = float(tf.make_ndarray(v.tensor))
    return out


def test_unknown_precision_names_the_binding(tmp_path, fresh_gin_config):
    with pytest.raises(ValueError, match=r"train.precision = 'float16'.*mixed_float16"):
        run(tmp_path, "train.precision = 'float16'")
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("runtime", ["runtime/tpu", "runtime/gpus", "runtime/gpus_depth2"])
def test_accelerator_runtimes_train_in_bfloat16(runtime, fresh_gin_config):
    gin.parse_config_files_and_bindings([TINY, config_files.resolve(runtime)], [])
    assert gin.query_parameter("train.precision") == "mixed_bfloat16"


@pytest.mark.slow
def test_float16_run_lowers_the_scale_without_tripping_max_non_finite_steps(
    tmp_path, fresh_gin_config
):
    result = run(
        tmp_path,
        "train.precision = 'mixed_float16'",
        "loss_scaling.initial_scale = 1e9",  # ~2^30: the first steps overflow
        "train.max_non_finite_steps = 2",
        "train.num_steps = 14",
        "train.fidelity_every = 0",
        "train.images_every = 0",
        "train.eval_every = 14",
        "train.checkpoint_every = 14",
    )
    assert result["step"] == 14 and np.isfinite(result["eval"]["loss"])
    assert keras.mixed_precision.dtype_policy().name == "float32"  # not leaked
    overflows = scalars(tmp_path / "train", "overflow_steps")
    assert max(overflows.values()) > 2  # more than max_non_finite_steps, in a row
    assert max(scalars(tmp_path / "train", "non_finite_steps").values()) == 0
    scale = scalars(tmp_path / "train", "loss_scale")
    assert scale[max(scale)] < 1e9 / 4
    path = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    names = [n for n, _ in tf.train.list_variables(path)]
    assert float(tf.train.load_variable(path, next(n for n in names if "dynamic_scale" in n))) < 1e9
    config = (tmp_path / "config.gin").read_text()
    assert "train.precision = 'mixed_float16'" in config


@pytest.mark.slow
def test_bfloat16_run_exports_a_float32_streaming_step(tmp_path, fresh_gin_config):
    run(
        tmp_path / "run",
        "train.precision = 'mixed_bfloat16'",
        "train.mode = 'skip_sideways'",
        "tiny_conv_pipeline.topology = 'skip(2, 1)'",
        "train.num_steps = 2",
        "train.fidelity_every = 0",
        "train.images_every = 0",
        "train.eval_every = 2",
        "train.checkpoint_every = 2",
    )
    output = tmp_path / "export"
    try:
        metadata = export.export(str(tmp_path / "run"), str(output), batch_size=1)
    finally:
        gin.clear_config()
    assert metadata["trained_precision"] == "mixed_bfloat16"
    assert json.loads((output / export.METADATA_FILE).read_text())["frame_dtype"] == "float32"
    model = tf.saved_model.load(str(output))
    _, inputs = model.signatures["step"].structured_input_signature
    assert inputs["frame"].dtype == tf.float32
    state = model.signatures["init_state"]()
    assert {v.dtype for k, v in state.items() if k != "t"} == {tf.float32}
    pipeline, _ = export.load_pipeline(str(tmp_path / "run"), batch_size=1)
    gin.clear_config()
    assert all(v.dtype == "float32" for v in pipeline.state_variables())
    frames = np.random.default_rng(0).normal(size=(1, 6, 16, 16, 3)).astype("float32")
    expected = np.swapaxes(pipeline(frames, training=False).numpy(), 0, 1)
    got = []
    for x_t in frames.transpose(1, 0, 2, 3, 4):
        out = model.signatures["step"](frame=tf.constant(x_t), **state)
        got.append(out.pop("outputs").numpy())
        state = out
    np.testing.assert_allclose(np.stack(got), expected, rtol=1e-5, atol=1e-6)
