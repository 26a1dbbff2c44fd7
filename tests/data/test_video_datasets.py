"""UCF101, HMDB51 and Kinetics-600 listings over fake trees in the official layouts."""

import os

import pytest
import tensorflow_datasets as tfds
from video_files import write_video

from sideways_tf.data import contract, dmvr, ucf101
from sideways_tf.data.prepare import convert, hmdb51, kinetics
from sideways_tf.data.prepare import ucf101 as ucf101_files
from sideways_tf.data.sampling import ClipSampling


def touch(path, text=""):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


# --- HMDB51 -----------------------------------------------------------------------------

HMDB = {  # class -> [(video, split-1 flag, split-2 flag)]; 1 = train, 2 = test, 0 = unused
    "brush_hair": [("bh_a.avi", "1", "2"), ("bh_b.avi", "2", "1"), ("bh_c.avi", "0", "1")],
    "sword_exercise": [("sw_a.avi", "1", "1"), ("sw_b.avi", "2", "0"), ("sw_gone.avi", "1", "2")],
    "clap": [("cl_a.avi", "2", "1")],
}


def hmdb_tree(root, real_videos=False):
    videos, splits = root / "hmdb51", root / "testTrainMulti_7030_splits"
    for label, rows in HMDB.items():
        for fold in (1, 2):
            lines = "".join(f"{v} {flags[fold - 1]} \n" for v, *flags in rows)
            touch(splits / f"{label}_test_split{fold}.txt", lines)
        for v, *_ in rows:
            if "gone" in v:
                continue
            os.makedirs(videos / label, exist_ok=True)
            if real_videos:
                write_video(videos / label / v, "mjpeg", 4, pix_fmt="yuvj420p")
            else:
                touch(videos / label / v)
    return str(videos), str(splits)


def test_hmdb51_splits_follow_the_split_files(tmp_path):
    videos, splits = hmdb_tree(tmp_path)
    train = hmdb51.list_split(videos, splits, "train", fold=1)
    assert train.labels == ["brush_hair", "clap", "sword_exercise"]
    assert [(e.video_id, e.label_index, e.label_string) for e in train.entries] == [
        ("bh_a", 0, "brush_hair"),
        ("sw_a", 2, "sword_exercise"),
    ]
    assert train.missing == [os.path.join(videos, "sword_exercise", "sw_gone.avi")]
    assert train.entries[0].path == os.path.join(videos, "brush_hair", "bh_a.avi")
    test = hmdb51.list_split(videos, splits, "test", fold=1)
    assert sorted(e.video_id for e in test.entries) == ["bh_b", "cl_a", "sw_b"]
    train2 = hmdb51.list_split(videos, splits, "train", fold=2)
    assert sorted(e.video_id for e in train2.entries) == ["bh_b", "bh_c", "cl_a", "sw_a"]


def test_hmdb51_errors_name_the_file_and_what_to_download(tmp_path):
    videos, splits = hmdb_tree(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'\*_test_split3.txt'.*test_train_splits.rar"):
        hmdb51.list_split(videos, splits, "train", fold=3)
    with pytest.raises(FileNotFoundError, match=r"nowhere.*hmdb51_org.rar"):
        hmdb51.list_split(str(tmp_path / "nowhere"), splits, "train")
    with pytest.raises(FileNotFoundError, match=r"split files folder not found.*splits_dir"):
        hmdb51.list_split(videos, str(tmp_path / "no_splits"), "train")
    touch(tmp_path / "bad" / "clap_test_split1.txt", "cl_a.avi 1\ncl_b.avi train\n")
    with pytest.raises(ValueError, match=r"clap_test_split1.txt' line 2.*<0\|1\|2>"):
        hmdb51.list_split(videos, str(tmp_path / "bad"), "train")


def test_hmdb51_videos_to_records_to_training_clips(tmp_path):
    videos, splits = hmdb_tree(tmp_path, real_videos=True)
    listing = hmdb51.list_split(videos, splits, "test", fold=1)
    out = str(tmp_path / "records")
    convert.convert_videos(
        listing, out, "test", fps=None, short_side=16, num_shards=2, progress=False
    )
    ds = dmvr.dmvr_dataset(
        os.path.join(out, "test-*-of-*.tfrecord"),
        False,
        sampling=ClipSampling(num_frames=2, image_size=8),
    )
    labels = sorted(int(e["label"]) for e in ds.as_numpy_iterator())
    assert labels == sorted(e.label_index for e in listing.entries) == [0, 1, 2]


# --- Kinetics-600 -----------------------------------------------------------------------

K600_TRAIN = (
    "label,youtube_id,time_start,time_end,split,is_cc\n"
    "abseiling,--abc_123,10,20,train,0\n"
    "zumba,x_Y-z,0,10,train,0\n"
    "baking cookies,kk1,120,130,train,1\n"
    "zumba,gone0,5,15,train,0\n"
    "zumba,x_Y-z,0,10,train,0\n"  # listed twice in the official CSVs; kept once
)
K600_VALIDATE = "label,youtube_id,time_start,time_end,split\nbaking cookies,val1,30,40,validate\n"
K600_TEST = "youtube_id,time_start,time_end,split\ntst1,1,11,test\ngone1,2,12,test\n"


def kinetics_tree(root):
    ann = root / "kinetics600"
    touch(ann / "train.csv", K600_TRAIN)
    touch(ann / "validate.csv", K600_VALIDATE)
    touch(ann / "test.csv", K600_TEST)
    clips = root / "clips"
    touch(clips / "train" / "abseiling" / "--abc_123_000010_000020.mp4")
    touch(clips / "train" / "zumba" / "x_Y-z_000000_000010.mp4")
    touch(clips / "train" / "baking_cookies" / "kk1_000120_000130.mp4")
    touch(clips / "val1_000030_000040.mp4")
    touch(clips / "test" / "tst1_000001_000011.mkv")
    return str(clips), str(ann)


def test_kinetics600_splits_from_the_official_csvs(tmp_path):
    clips, ann = kinetics_tree(tmp_path)
    train = kinetics.list_split(clips, ann, "train")
    assert train.labels == ["abseiling", "baking cookies", "zumba"]
    assert [(e.video_id, e.label_index) for e in train.entries] == [
        ("--abc_123_000010_000020", 0),
        ("x_Y-z_000000_000010", 2),
        ("kk1_000120_000130", 1),
    ]
    assert train.entries[2].path.endswith("baking_cookies/kk1_000120_000130.mp4")
    assert train.missing == ["gone0_000005_000015"]
    validate = kinetics.list_split(clips, ann, "validate")
    assert [(e.video_id, e.label_index) for e in validate.entries] == [("val1_000030_000040", 1)]
    test = kinetics.list_split(clips, ann, "test")
    assert [(e.video_id, e.label_index, e.label_string) for e in test.entries] == [
        ("tst1_000001_000011", -1, "")
    ]
    assert test.missing == ["gone1_000002_000012"]


def test_kinetics600_errors_name_the_file_and_the_fix(tmp_path):
    clips, ann = kinetics_tree(tmp_path)
    touch(tmp_path / "kinetics600" / "validate.csv", K600_VALIDATE + "knitting,v2,0,10,validate\n")
    with pytest.raises(ValueError, match=r"validate.csv' line 3: unknown label 'knitting'.*Fix"):
        kinetics.list_split(clips, ann, "validate")
    touch(tmp_path / "kinetics600" / "validate.csv", K600_VALIDATE)
    with pytest.raises(FileNotFoundError, match=r"train.csv.*kinetics600.tar.gz"):
        kinetics.list_split(clips, str(tmp_path / "no_annotations"), "train")
    with pytest.raises(FileNotFoundError, match=r"None of the 1 clips.*val1_000030_000040.mp4"):
        kinetics.list_split(str(tmp_path / "kinetics600"), ann, "validate")
    with pytest.raises(ValueError, match="one of"):
        kinetics.list_split(clips, ann, "val")


# --- UCF101 -----------------------------------------------------------------------------


def ucf_tree(root):
    splits, videos = root / "ucfTrainTestlist", root / "UCF-101"
    touch(splits / "classInd.txt", "1 ApplyEyeMakeup\n2 HandstandPushups\n3 YoYo\n")
    touch(
        splits / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 2\n"
        "YoYo/v_YoYo_g09_c01.avi 3\n",
    )
    touch(splits / "testlist01.txt", "YoYo/v_YoYo_g01_c01.avi\nApplyEyeMakeup/v_gone.avi\n")
    for rel in [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi",
        "YoYo/v_YoYo_g09_c01.avi",
        "YoYo/v_YoYo_g01_c01.avi",
    ]:
        touch(videos / rel)
    return str(videos), str(splits)


def test_ucf101_official_split_lists(tmp_path):
    videos, splits = ucf_tree(tmp_path)
    train = ucf101_files.list_split(videos, splits, "train", 1)
    assert train.labels == ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]
    assert [(e.video_id, e.label_index) for e in train.entries] == [
        ("v_ApplyEyeMakeup_g08_c01", 0),
        ("v_HandStandPushups_g08_c01", 1),
        ("v_YoYo_g09_c01", 2),
    ]
    test = ucf101_files.list_split(videos, splits, "test", 1)
    assert [(e.video_id, e.label_index) for e in test.entries] == [("v_YoYo_g01_c01", 2)]
    assert test.missing == [os.path.join(videos, "ApplyEyeMakeup/v_gone.avi")]
    with pytest.raises(FileNotFoundError, match=r"trainlist02.txt.*UCF101TrainTestSplits"):
        ucf101_files.list_split(videos, splits, "train", 2)
    with pytest.raises(FileNotFoundError, match=r"nowhere.*UCF101.rar"):
        ucf101_files.list_split(str(tmp_path / "nowhere"), splits, "train", 1)


def test_ucf101_from_tfds_follows_the_contract(tmp_path):
    with tfds.testing.mock_data(num_examples=3):
        train = ucf101.ucf101_tfds_dataset(True, ClipSampling(num_frames=4, image_size=16))
        eval_ = ucf101.ucf101_tfds_dataset(
            False, ClipSampling(num_frames=4, image_size=16, num_eval_clips=2)
        )
        train_elements = list(train.as_numpy_iterator())
        eval_elements = list(eval_.as_numpy_iterator())
    assert train.element_spec == contract.clip_spec(4, 16, 16)
    assert sorted(int(e["video_index"]) for e in train_elements) == [0, 1, 2]
    assert [int(e["video_index"]) for e in eval_elements] == [0, 0, 1, 1, 2, 2]
    assert all(0 <= e["label"] < ucf101.NUM_CLASSES for e in train_elements)
    with pytest.raises(FileNotFoundError, match=r"not prepared.*tfds build ucf101"):
        ucf101.ucf101_tfds_dataset(True, data_dir=str(tmp_path / "empty"))
