"""train.train(workdir, Settings(...)) from Python: its workdir evaluates, exports and resumes."""

import functools
import json

import gin
import numpy as np
import pytest
import tensorflow as tf

from sideways_tf import export, runs, tasks, train, workdir
from sideways_tf.data import moving_shapes
from sideways_tf.evaluate import evaluate_workdir
from sideways_tf.models import convnet

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("fresh_gin_config")]

DATA = dict(num_frames=8, frame_size=16, shape_size=5, distractor_size=3)


def settings(**changes):
    """Settings made in Python only (no gin binding): partials of gin configurables."""
    return runs.Settings(
        **{
            **dict(
                mode="skip_sideways",
                model_fn=functools.partial(convnet.tiny_conv_pipeline, topology="skip(2)"),
                train_data=functools.partial(
                    moving_shapes.moving_shapes_dataset, split="train", **DATA
                ),
                eval_data=functools.partial(
                    moving_shapes.moving_shapes_dataset, split="eval", num_examples=4, **DATA
                ),
                task=tasks.Classification(num_classes=12),
                global_batch=4,
                num_steps=4,
                log_every=2,
                fidelity_every=0,
                images_every=0,
                eval_every=2,
                checkpoint_every=2,
                data_checkpoint="symbolic",
                progress=False,
            ),
            **changes,
        }
    )


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """A run launched from Python, stopped at step 2 of 4."""
    path = tmp_path_factory.mktemp("python_run")
    gin.clear_config()
    result = train.train(str(path), settings(stop_at_step=2))
    return path, result


def test_config_gin_records_the_settings_and_rebuilds_them_in_a_fresh_gin(launched):
    path, result = launched
    assert result["step"] == 2
    text = workdir.read_config(str(path))
    assert "train.model_fn = @model_fn/tiny_conv_pipeline" in text
    assert "model_fn/tiny_conv_pipeline.topology = 'skip(2)'" in text
    assert "train_data/moving_shapes_dataset.num_frames = 8" in text
    assert text.count("train.global_batch =") == 1  # gin's own default line is replaced
    gin.clear_config()
    run = runs.load_run(str(path))
    given = settings(stop_at_step=2)
    for name in ("mode", "global_batch", "num_steps", "stop_at_step", "eval_every"):
        assert getattr(run.settings, name) == getattr(given, name), name
    assert "train.task = @task/Classification()" in text  # the task, as its gin reference
    assert repr(run.settings.task) == repr(given.task) == repr(run.pipeline.task)
    assert run.step == 2 and run.frame_shape == (16, 16, 3) and run.num_frames == 8
    assert (
        run.pipeline.topology.describe()
        == given.model_fn(
            batch_size=4, frame_shape=(16, 16, 3), task=tasks.Classification(num_classes=12)
        ).topology.describe()
    )
    gin.clear_config()


def test_the_workdir_evaluates_exports_and_resumes_from_its_step(launched, tmp_path, capsys):
    path, _ = launched
    gin.clear_config()
    evaluated = evaluate_workdir(str(path), progress=False)
    assert evaluated["step"] == 2 and np.isfinite(evaluated["eval"]["loss"])
    meta = export.export(str(path), str(tmp_path / "export"), batch_size=2)
    assert meta["checkpoint_step"] == 2 and meta["mode"] == "skip_sideways"
    assert meta["frame_shape"] == [16, 16, 3] and meta["num_classes"] == 12
    saved = tf.saved_model.load(str(tmp_path / "export"))
    assert json.loads(saved.signatures["metadata"]()["json"].numpy())["batch_size"] == 2

    # Resume in the same process (gin holds the evaluation's config now), to the end.
    before = tf.train.load_variable(
        tf.train.latest_checkpoint(str(path / "checkpoints")), "step/.ATTRIBUTES/VARIABLE_VALUE"
    )
    capsys.readouterr()
    # (stop_at_step given: Settings is gin's `train`, and evaluate_workdir left the
    # workdir's config parsed, so an unset field would take its train.stop_at_step = 2.)
    result = train.train(str(path), settings(stop_at_step=None))
    assert int(before) == 2 and result["step"] == 4
    assert "at step 2" in capsys.readouterr().out  # "Resumed from .../ckpt-2 at step 2."
    history = workdir.read_evaluations(str(path))["history"]
    assert [h["step"] for h in history if h.get("source", "train") == "train"] == [2, 4]


def not_registered():
    return moving_shapes.moving_shapes_dataset(**DATA)


@pytest.mark.parametrize(
    "field, value, why",
    [
        ("train_data", lambda: moving_shapes.moving_shapes_dataset(**DATA), "it is a lambda"),
        ("train_data", not_registered, "a function gin does not know"),
        (
            "model_fn",
            functools.partial(convnet.tiny_conv_pipeline, widths=np.array([4, 8, 8])),
            "its arguments ['widths'] are not literals",
        ),
    ],
)
def test_what_gin_cannot_record_is_refused_before_anything_is_written(tmp_path, field, value, why):
    with pytest.raises(ValueError) as error:
        train.train(str(tmp_path / "run"), settings(**{field: value}))
    message = str(error.value)
    assert f"train.{field} = " in message and why in message
    assert "cannot be written to the workdir's config.gin" in message
    assert "evaluated, exported or resumed" in message
    assert "functools.partial(" in message and f"train.{field} = @my_fn" in message
    assert not (tmp_path / "run").exists()


def test_settings_made_from_gin_bindings_are_recorded_as_the_same_references():
    from sideways_tf import config_files

    gin.parse_config_files_and_bindings([config_files.resolve("tiny")], [])
    given = runs.Settings()
    text = runs.record_settings(given)
    for line in (
        "train.model_fn = @tiny_conv_pipeline",
        "train.train_data = @train/moving_shapes_dataset",
        "train.eval_data = @eval/moving_shapes_dataset",
        "train.optimizer_fn = @adam",
        "train.num_steps = 6",
    ):
        assert line in text.splitlines(), line
    # The text alone (imports first) rebuilds the same settings in an empty gin config.
    gin.clear_config()
    gin.parse_config(text)
    again = runs.Settings()
    for field in ("mode", "global_batch", "num_steps", "data_checkpoint"):
        assert getattr(again, field) == getattr(given, field), field
    assert (
        repr(again.task)
        == repr(given.task)
        == "Classification(num_classes=12, loss='sparse_softmax_cross_entropy')"
    )
    assert again.model_fn.__name__ == "tiny_conv_pipeline"
