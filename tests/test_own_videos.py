"""Your own videos with no Python: a folder of videos -> sideways-convert -> sideways-train
(classification and future frames) -> sideways-eval -> sideways-export, all through the
command lines and the shipped gin files (data/folder*.gin, experiments/folder*_<mode>.gin).
"""

import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
from tiny_videos import write_video

from sideways_tf import cli
from sideways_tf.data.prepare import convert

pytestmark = pytest.mark.usefixtures("fresh_gin_config")

SIZE, NUM_FRAMES = 32, 24


def write_moving_square(path, direction: int, seed: int):
    """A textured background with a bright square moving 2 px/frame left (-1) or right (+1)."""
    write_video(path, NUM_FRAMES, seed, height=SIZE, width=SIZE, direction=direction)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """train: 2 videos per class (left, right); eval: 1 per class; converted by the CLI."""
    root = tmp_path_factory.mktemp("own_videos")
    for split, per_class in (("train", 2), ("eval", 1)):
        for c, (name, direction) in enumerate((("left", -1), ("right", 1))):
            os.makedirs(root / "videos" / split / name)
            for v in range(per_class):
                write_moving_square(
                    root / "videos" / split / name / f"{split}{v}.mp4", direction, 10 * c + v
                )
        status = convert.main(
            [
                "--dataset=folder",
                f"--videos_dir={root / 'videos' / split}",
                f"--split={split}",
                f"--output_dir={root / 'records'}",
                "--fps=none",
                "--short_side=32",
                "--workers=1",
                "--no_progress",
            ]
        )
        assert status == 0
    return root / "records"


def train_argv(workdir, gin_file, records, *params):
    small = [
        f"TRAIN_RECORDS='{records}/train-*-of-*.tfrecord'",
        f"EVAL_RECORDS='{records}/eval-*-of-*.tfrecord'",
        "clip_sampling.num_frames = 8",
        "clip_sampling.image_size = 16",
        "train.global_batch = 2",
        "train.num_steps = 2",
        "train.eval_every = 2",
        "train.checkpoint_every = 2",
        "train.fidelity_every = 0",
        "train.images_every = 0",
        "train.progress = False",
        "conv_pipeline.widths = (4, 4, 8, 8)",
    ]
    argv = [f"--workdir={workdir}", f"--gin_file={gin_file}"]
    return argv + [f"--gin_param={p}" for p in small + list(params)]


def last_eval(workdir) -> dict:
    with open(os.path.join(workdir, "eval_metrics.json")) as f:
        return json.load(f)["history"][-1]


def test_a_folder_of_videos_trains_both_tasks_evaluates_and_exports(records, tmp_path, capsys):
    # Classification: the only binding besides the small sizes is NUM_CLASSES.
    classes = str(tmp_path / "classes")
    cli.train_main(
        train_argv(classes, "experiments/folder_skip_sideways", records, "NUM_CLASSES = 2")
    )
    metrics = last_eval(classes)
    assert metrics["step"] == 2
    assert metrics["num_videos"] == 2 and metrics["num_clips"] == 8  # 4 clips per eval video
    assert 0.0 <= metrics["video_accuracy"] <= 1.0

    # Future frames (FutureFrames.decoder "motion", h = 1): clips of K + 1 = 9 frames in [-1, 1].
    future = str(tmp_path / "future")
    gin.clear_config()  # (each command parses and locks its own config)
    cli.train_main(train_argv(future, "experiments/folder_future_sideways", records))
    metrics = last_eval(future)
    # Chain of 4 units: T_fill = 4, lag 3; steps t = 4..9 all have x[t - 2] in the clip.
    assert metrics["num_clips"] == 8 and metrics["scored_frames"] == 8 * 6
    assert 10.0 < metrics["psnr_copy_last"] < 60.0  # frames in [-1, 1] (max_val 2)
    capsys.readouterr()

    gin.clear_config()
    cli.eval_main([f"--workdir={future}"])
    out = capsys.readouterr().out
    assert out.startswith("step 2 ")
    again = last_eval(future)
    assert again["source"] == "sideways-eval"
    assert again["psnr"] == pytest.approx(metrics["psnr"], abs=1e-4)  # the same checkpoint

    exported = str(tmp_path / "export")
    gin.clear_config()
    cli.export_main([f"--workdir={future}", f"--output={exported}"])
    with open(os.path.join(exported, "sideways_export.json")) as f:
        meta = json.load(f)
    assert meta["task"] == "future_frames" and meta["frame_shape"] == [16, 16, 3]
    # The head's two lines (a chain has no other): its edges from the input, delays 3 and 4.
    assert [n for n in meta["state_names"] if n.startswith("delay_")] == ["delay_1", "delay_2"]
    loaded = tf.saved_model.load(exported)
    state = loaded.signatures["init_state"]()
    # x[t-3] .. x[t-1] and x[t-4] .. x[t-1]: the motion head reads x[t-3] and the frame before.
    assert tuple(state["delay_1"].shape) == (3, 1, 16, 16, 3)
    assert tuple(state["delay_2"].shape) == (4, 1, 16, 16, 3)
    frames = np.random.default_rng(0).uniform(-1, 1, (5, 1, 16, 16, 3)).astype("float32")
    for frame in frames:
        state = loaded.signatures["step"](frame=tf.constant(frame), **state)
        outputs = state.pop("outputs")
    # The newest frame the output has seen is x[t - 3]: frame 2 of 5 (0-based 1).
    change = outputs.numpy() - frames[1]
    assert np.abs(change).mean() < 0.5 * np.abs(frames[4] - frames[1]).mean()


@pytest.mark.parametrize(
    "gin_file, params, expected",
    [
        (
            "experiments/folder_sideways",
            ["NUM_CLASSES = 2", "clip_sampling.num_frames = 30"],
            "a clip spans (K - 1) * stride + 1 = 30 frames, K = clip_sampling.num_frames = 30",
        ),
        (
            "experiments/folder_future_bptt",
            ["clip_sampling.num_frames = 24"],
            "K = clip_sampling.num_frames = 24 + dmvr_dataset.extra_frames = 1",
        ),
        (
            "experiments/folder_future_skip_sideways",
            ["train.global_batch = 16"],
            "The evaluation data (train.eval_data) holds 8 clip(s), fewer than one batch of 16",
        ),
        (
            "experiments/folder_frame_bp",
            [],
            "NUM_CLASSES/macro.value set to `%gin.REQUIRED` but not subsequently overridden",
        ),
    ],
)
def test_a_folder_that_does_not_fit_the_experiment_is_a_message_naming_the_binding(
    records, tmp_path, capsys, gin_file, params, expected
):
    argv = train_argv(tmp_path / "run", gin_file, records, *params)
    with pytest.raises(SystemExit) as exited:
        cli.train_main(argv)
    _, err = capsys.readouterr()
    assert exited.value.code == 2, err
    assert expected in err and "Traceback" not in err
