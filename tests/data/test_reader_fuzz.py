"""Fuzzing the DMVR reader with randomly damaged shards: it never raises and never hangs.

Damage at both levels the reader promises to survive: record payloads with valid
checksums (garbage protos, broken JPEGs, no frames, flipped bytes inside the proto) and
the shard file below the checksums (truncated, a flipped byte).
"""

import os
import tempfile

import numpy as np
import tensorflow as tf
from bounded import run_within
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dmvr_reader import SIZE, jpeg, level

from sideways_tf.data import dmvr
from sideways_tf.data.sampling import ClipSampling

NUM_FRAMES = 3  # K: at least the frames of any video here, so every frame is decoded
TIME_LIMIT = 60.0  # seconds for one damaged dataset; the clean case takes about one


RECORD = st.one_of(
    st.tuples(st.just("good"), st.integers(1, NUM_FRAMES)),
    st.tuples(st.just("garbage"), st.binary(max_size=40)),
    st.tuples(st.just("broken_jpeg"), st.integers(1, NUM_FRAMES)),  # one frame cut in half
    st.tuples(st.just("no_frames"), st.none()),
    st.tuples(st.just("flipped"), st.lists(st.floats(0, 1, exclude_max=True), min_size=1)),
)
FILE_DAMAGE = st.one_of(  # where in the file (a fraction of its length)
    st.none(), st.tuples(st.sampled_from(["truncate", "flip"]), st.floats(0, 1, exclude_max=True))
)
SHARDS = st.lists(st.tuples(st.lists(RECORD, min_size=1, max_size=4), FILE_DAMAGE), max_size=3)


def serialize(kind, arg, label):
    """One record's payload; the TFRecord writer adds valid checksums."""
    if kind == "garbage":
        return arg
    frames = [jpeg(level(t)) for t in range(arg if isinstance(arg, int) else 2)]
    if kind == "no_frames":
        frames = []
    if kind == "broken_jpeg":
        frames[-1] = frames[-1][: len(frames[-1]) // 2]
    data = dmvr.make_sequence_example(frames, label, "c", f"v{label}").SerializeToString()
    if kind == "flipped":
        data = bytearray(data)
        for where in arg:
            data[int(where * len(data))] ^= 0xFF
        data = bytes(data)
    return data


def write_damaged_shards(directory, shards):
    """Writes the shards; returns ({video_index: kind} of every record read back intact
    up to the first damaged byte of its shard)."""
    readable = {}
    for s, (records, damage) in enumerate(shards):
        path = os.path.join(directory, dmvr.shard_name("s", s, len(shards)))
        payloads = [serialize(kind, arg, 100 * s + r) for r, (kind, arg) in enumerate(records)]
        with tf.io.TFRecordWriter(path) as writer:
            for payload in payloads:
                writer.write(payload)
        data = bytearray(open(path, "rb").read())
        first_damaged = len(data)
        if damage is not None:
            how, where = damage
            first_damaged = int(where * len(data))
            if how == "truncate":
                del data[first_damaged:]
            else:
                data[first_damaged] ^= 0xFF
            open(path, "wb").write(bytes(data))
        end = 0
        for r, (payload, (kind, _)) in enumerate(zip(payloads, records)):
            end += len(payload) + 16  # length, its CRC, data, its CRC
            if end <= first_damaged:
                readable[s * 2**32 + r] = kind
    return readable


@settings(max_examples=10, deadline=TIME_LIMIT * 1000, derandomize=True, database=None)
@given(shards=SHARDS, training=st.booleans())
def test_damaged_shards_are_read_up_to_the_damage_and_bad_records_skipped(shards, training):
    with tempfile.TemporaryDirectory() as directory:
        readable = write_damaged_shards(directory, shards)
        before = dmvr.skipped_records()
        if not shards:  # no shard at all: the one documented error
            try:
                dmvr.dmvr_dataset(os.path.join(directory, "s-*"), training)
            except FileNotFoundError as e:
                assert "sideways-convert" in str(e)
            return
        ds = dmvr.dmvr_dataset(
            os.path.join(directory, "s-*"),
            training,
            sampling=ClipSampling(num_frames=NUM_FRAMES, image_size=SIZE),
        )
        elements = run_within(TIME_LIMIT, lambda: list(ds.as_numpy_iterator()), "the reader")
        skipped = dmvr.skipped_records() - before

    read = [int(e["video_index"]) for e in elements]
    assert len(set(read)) == len(read) and set(read) <= set(readable)
    # Intact records are all read; records that cannot decode never are.
    assert {i for i, kind in readable.items() if kind == "good"} <= set(read)
    assert not {i for i, kind in readable.items() if kind not in ("good", "flipped")} & set(read)
    # Every record up to the damage is either read or counted as skipped.
    assert len(read) + skipped == len(readable)
    for e in elements:
        assert e["frames"].shape == (NUM_FRAMES, SIZE, SIZE, 3)
        assert np.isfinite(e["frames"]).all()
