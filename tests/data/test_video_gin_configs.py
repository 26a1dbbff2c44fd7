"""The gin files of the real video datasets: they parse, and bind a working reader."""

import os

import gin
import pytest
import tensorflow as tf

from sideways_tf import config_files, tasks
from sideways_tf.data import contract, dmvr

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATASETS = {"ucf101": "UCF101", "hmdb51": "HMDB51", "kinetics600": "KINETICS600"}
MODES = ("frame_bp", "bptt", "sideways", "skip_sideways")


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def write_records(directory, split):
    path = os.path.join(directory, dmvr.shard_name(split, 0, 1))
    jpeg = tf.io.encode_jpeg(tf.zeros([20, 30, 3], tf.uint8)).numpy()
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(2):
            example = dmvr.make_sequence_example([jpeg] * 40, i, "c", f"v{i}")
            writer.write(example.SerializeToString())


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_experiment_files_bind_the_dmvr_reader(dataset, clean_gin, tmp_path):
    write_records(str(tmp_path), "tr")
    write_records(str(tmp_path), "ev")
    macro = DATASETS[dataset]
    for mode in MODES:
        gin.clear_config()
        path = config_files.resolve(f"experiments/{dataset}_{mode}")
        header = open(path).read().split("\ninclude")[0]
        assert f"sideways-train --gin_file=experiments/{dataset}_{mode}" in header
        assert "not measured here; needs the dataset" in header
        gin.parse_config_files_and_bindings(
            [path],
            [
                f"{macro}_TRAIN = '{tmp_path}/tr-*-of-*.tfrecord'",
                f"{macro}_EVAL = '{tmp_path}/ev-*-of-*.tfrecord'",
            ],
        )
        assert gin.query_parameter("train.mode") == mode
    with gin.config_scope("train"):
        train_ds = dmvr.dmvr_dataset()
    with gin.config_scope("eval"):
        eval_ds = dmvr.dmvr_dataset()
    assert train_ds.element_spec == contract.clip_spec(32, 112, 112)
    assert len(list(eval_ds.as_numpy_iterator())) == 2 * 4  # 2 videos x 4 clips


@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_experiment_files_build_a_model_that_fits_their_mode(dataset, clean_gin):
    from sideways_tf.engine import check_mode

    for mode in MODES:
        gin.clear_config()
        path = config_files.resolve(f"experiments/{dataset}_{mode}")
        gin.parse_config_files_and_bindings([path], [])
        model_fn = gin.query_parameter("train.model_fn").scoped_configurable_fn
        assert model_fn.__name__ in ("vgg8", "vgg16", "resnet18"), path  # not conv_small
        pipeline = model_fn(
            batch_size=1, frame_shape=(112, 112, 3), task=tasks.Classification(num_classes=7)
        )
        check_mode(mode, pipeline)  # raises if the topology does not fit the mode
