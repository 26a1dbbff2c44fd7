"""Modes and tasks are values: a new one is one entry, and the rest of the library follows.

A toy mode (Sideways with the bottom unit frozen) and a toy task (a label per
frame) are added here, in this module alone, and trained by the one engine.
"""

import keras
import numpy as np
import pytest
from keras import ops
from toy import dense_pipeline, random_clip

import sideways_tf as sw
from sideways_tf import backend, modes, rules, tasks
from sideways_tf.evaluate import score_batch


def frozen_bottom(
    pipeline, state, clip, targets, present, training=True, loss_scale=None, unrolled=False
):
    """Sideways, with unit 1's gradient zeroed: a rule of the same signature."""
    out = rules.sideways_gradients(
        pipeline, state, clip, targets, present, training, loss_scale, unrolled
    )
    grads = ([ops.zeros_like(g) for g in out.grads[0]], *out.grads[1:])
    return out._replace(grads=tuple(grads))


@pytest.fixture
def toy_mode():
    mode = modes.register(
        modes.Mode("frozen_bottom", frozen_bottom, topology="chain", fills_before_loss=2)
    )
    yield mode
    modes.unregister("frozen_bottom")


def test_a_registered_mode_trains_through_the_one_engine(toy_mode):
    pipeline = dense_pipeline("chain", num_units=3)
    engine = sw.Engine(pipeline, "frozen_bottom", keras.optimizers.SGD(0.1))
    before = [np.array(v) for v in sw.engine.all_variables(pipeline)]
    clip, labels = random_clip(pipeline, 8)
    metrics = engine.train_clip(clip, labels)
    after = [np.array(v) for v in sw.engine.all_variables(pipeline)]
    bottom = len(pipeline.unit_variables(1))
    assert all(np.array_equal(b, a) for b, a in zip(before[:bottom], after[:bottom]))
    assert all(not np.array_equal(b, a) for b, a in zip(before[bottom:], after[bottom:]))
    assert float(metrics["valid_steps"]) == 8 - pipeline.fill_steps + 1
    # Everything else asks the mode: lag, first step, clip length, topology, settings.
    assert toy_mode.input_lag(pipeline) == 2 and toy_mode.first_step(pipeline) == 3
    with pytest.raises(ValueError, match=r"too short for mode 'frozen_bottom'.*at least 5"):
        toy_mode.check_clip_length(pipeline, 4, "num_frames")
    with pytest.raises(ValueError, match="mode='frozen_bottom' runs on a chain"):
        sw.Engine(dense_pipeline("skip(2)", num_units=3), "frozen_bottom")
    with pytest.raises(ValueError, match=r"or mode='sideways' or mode='frozen_bottom'\."):
        sw.Engine(pipeline, "skip_sideways")
    assert toy_mode.name in sw.MODES


@pytest.mark.tf_only  # runs.Settings: the gin run path's settings (sideways_tf.runs imports TF)
def test_an_unknown_mode_names_the_binding_and_the_choices():
    from sideways_tf import runs

    with pytest.raises(ValueError, match=r"train.mode = 'sidways' is not a mode.*skip_sideways"):
        runs.Settings(mode="sidways", model_fn=None, train_data=None)


def test_mode_facts_on_a_skip_pipeline():
    pipeline = dense_pipeline("skip(2)", num_units=4)
    fill = pipeline.fill_steps
    lag = pipeline.topology.newest_lag(4)
    expected = {
        "frame_bp": (0, 1, 1),
        "bptt": (lag, fill, fill),
        "skip_sideways": (lag, fill, 2 * fill - 1),
    }
    for name, (want_lag, first, shortest) in expected.items():
        mode = modes.get(name)
        assert (mode.input_lag(pipeline), mode.first_step(pipeline)) == (want_lag, first)
        assert mode.min_frames(pipeline)[0] == shortest


# -- A toy task: a label per frame ----------------------------------------------------


class PerFrameLabels(tasks.Task):
    """A class per frame [B, K]; the top output of step t is scored on frame t - lag's."""

    name = "per_frame_labels"
    label_key = "label"

    def loss(self, targets, outputs):
        return tasks.classification.sparse_softmax_cross_entropy(targets, outputs)

    def step_targets(self, clip, labels, lag):
        num_frames = ops.shape(clip)[1]
        source = ops.arange(num_frames) - lag
        present = ops.cast(source >= 0, "float32")
        return ops.take(labels, ops.maximum(source, 0), axis=1), present

    def check_labels(self, labels, batch_size, num_outputs=None):
        if len(labels.shape) != 2 or labels.shape[0] != batch_size:
            raise ValueError(f"labels have shape {tuple(labels.shape)}; expected [B, K].")

    def train_metrics(self, outputs, labels):
        return {}

    def check_data(self, dataset, binding):
        from sideways_tf.data import contract  # (a tf.data dataset: TensorFlow)

        return contract.check_clip_dataset(dataset, binding, labelled=False)

    def metrics(self):
        return FrameAccuracy()

    def export_metadata(self, pipeline, class_names=None):
        return dict(task=self.name, outputs="logits [B, C] of frame t - newest_lag")


class FrameAccuracy(tasks.Metrics):
    """The share of scored steps whose argmax is their frame's class."""

    def __init__(self):
        self.hits = self.total = 0.0

    def update(self, batch):
        outputs, weights = np.asarray(batch.outputs), np.asarray(batch.weights)
        hit = (np.argmax(outputs, -1) == np.asarray(batch.targets)).astype("float32")
        self.hits += float(np.sum(hit * weights))
        self.total += float(np.sum(weights)) * int(outputs.shape[0])

    def result(self):
        return {"frame_accuracy": self.hits / self.total}

    def headline(self, result):
        return f"frame accuracy {result['frame_accuracy']:.3f}"


def frame_accuracy(engine, frames, labels):
    """The evaluation's figure over clips [N, K, dim], batch by batch (evaluate.score_batch,
    the loop's body); on TensorFlow, evaluate() over the same clips as a tf.data dataset too,
    which must agree."""
    metrics = engine.task.metrics()
    batch, next_video = engine.batch_per_process, 0
    for b in range(0, len(frames), batch):
        _, next_video = score_batch(
            engine, metrics, frames[b : b + batch], labels[b : b + batch], None, next_video
        )
    accuracy = metrics.result()["frame_accuracy"]
    if backend.is_tensorflow():
        import tensorflow as tf

        from sideways_tf.evaluate import evaluate

        dataset = tf.data.Dataset.from_tensor_slices({"frames": frames, "label": labels})
        assert evaluate(engine, dataset)["frame_accuracy"] == pytest.approx(accuracy, abs=1e-6)
    return accuracy


def per_frame_data(num, num_frames=12, dim=5, seed=0):
    """Frames whose class is the sign of their first feature, flipping within clips."""
    rng = np.random.default_rng(seed)
    frames = rng.normal(size=(num, num_frames, dim)).astype("float32")
    labels = (frames[..., 0] > 0).astype("int32")
    return frames, labels


@pytest.mark.parametrize("mode", ["frame_bp", "bptt", "sideways"])
def test_a_new_task_trains_and_evaluates_in_every_mode(mode):
    keras.utils.set_random_seed(0)
    units = [sw.Unit(keras.layers.Dense(16, activation="tanh"), name=f"u{i}") for i in range(2)]
    pipeline = sw.Pipeline(
        units, head=keras.layers.Dense(2), task=PerFrameLabels(), batch_size=8, frame_shape=(5,)
    )
    engine = sw.Engine(pipeline, mode, keras.optimizers.Adam(0.02))
    frames, labels = per_frame_data(8 * 40)
    eval_frames, eval_labels = per_frame_data(64, seed=1)
    before = frame_accuracy(engine, eval_frames, eval_labels)
    losses = [
        float(engine.train_clip(frames[b : b + 8], labels[b : b + 8])["loss"])
        for b in range(0, len(frames), 8)
    ]
    after = frame_accuracy(engine, eval_frames, eval_labels)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert after > 0.85 > before
    with pytest.raises(ValueError, match=r"expected \[B, K\]"):
        engine.train_clip(frames[:8], labels[:8, 0])
