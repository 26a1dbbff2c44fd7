"""A Sideways run that stalls says so (diagnostics.StallWatch), in the CLI's loop too.

StallWatch is plain Python over the figures the loops already have: the unit tests
feed it losses and fidelities; the end-to-end test runs the tiny config through
sideways-train with thresholds it cannot meet and reads its output.
"""

import math

import pytest

from sideways_tf import cli, diagnostics, modes

pytestmark = pytest.mark.usefixtures("fresh_gin_config")

UNITS = ["low", "mid", "top"]


def watch(mode="skip_sideways", **kwargs):
    return diagnostics.StallWatch(
        mode=mode, approximate=modes.get(mode).approximate, units=UNITS, **kwargs
    )


def test_only_the_sideways_modes_are_approximate():
    assert {name for name, m in modes.MODES.items() if m.approximate} == {
        "sideways",
        "skip_sideways",
    }


def test_a_loss_at_chance_warns_once_after_the_steps_naming_mode_and_reference():
    w = watch(chance_loss=math.log(12), after_steps=30, window=10)
    said = [w.loss(s, math.log(12) + 0.01) for s in range(1, 60)]
    assert [s for s, ws in enumerate(said, start=1) if ws] == [30]  # at 30, and only once
    (text,) = said[29]
    assert "after 30 steps of skip_sideways" in text and "2.485" in text
    assert "mode='bptt'" in text and "fidelity/unit_i" in text  # what to do, what to read
    assert w.state() == {"stalled_units": [], "loss_stalled": True}


def test_a_loss_that_leaves_chance_does_not_warn():
    w = watch(chance_loss=math.log(12), after_steps=30, window=10)
    losses = [math.log(12) * (1 - 0.01 * s) for s in range(1, 60)]  # down 1% a step
    assert not any(w.loss(s, v) for s, v in enumerate(losses, start=1))


def test_a_loss_near_chance_on_its_way_down_does_not_warn():
    """3 classes: from 1.15 (above ln 3 at initialisation) to 1.05, 4% under ln 3 at step
    200: within the margin of chance, but 9% under where it started: learning."""
    w = watch(chance_loss=math.log(3), after_steps=200, window=20)
    losses = [1.15 - 0.1 * s / 200 for s in range(1, 201)]
    assert not any(w.loss(s, v) for s, v in enumerate(losses, start=1))


def test_exact_modes_are_not_watched():
    w = watch(mode="bptt", chance_loss=1.0, after_steps=2, window=2)
    assert not any(w.loss(s, 5.0) for s in range(1, 20))
    assert not any(w.fidelity(s, [-1.0, -1.0, 1.0]) for s in range(1, 20))


def test_without_a_chance_level_the_first_window_is_the_reference():
    w = watch(chance_loss=None, after_steps=20, window=5)
    flat = [w.loss(s, 0.30 + 0.001 * (s % 2)) for s in range(1, 25)]
    assert [s for s, ws in enumerate(flat, start=1) if ws] == [20]
    assert "its first 5 steps" in flat[19][0]
    w = watch(chance_loss=None, after_steps=20, window=5)
    assert not any(w.loss(s, 0.3 * 0.9**s) for s in range(1, 25))


def test_a_unit_whose_fidelity_stays_low_is_named_once_after_patience():
    w = watch(fidelity_floor=0.1, patience=3)
    assert w.fidelity(1, [0.05, 0.9, 1.0]) == []
    assert w.fidelity(2, [-0.2, 0.9, 1.0]) == []
    (text,) = w.fidelity(3, [0.02, 0.9, 1.0])
    assert text.startswith("step 3: unit 1 ('low') has had gradient fidelity below 0.1")
    assert "now 0.020" in text and "skip(2)" in text
    assert w.fidelity(4, [0.0, 0.9, 1.0]) == []  # once per unit
    assert w.state()["stalled_units"] == [1]


def test_one_good_sample_resets_the_count():
    w = watch(fidelity_floor=0.1, patience=3)
    for s, low in enumerate([0.0, 0.0, 0.5, 0.0, 0.0], start=1):
        assert w.fidelity(s, [low, 1.0, 1.0]) == []


def test_bad_thresholds_are_refused_by_name():
    with pytest.raises(ValueError, match="stall_after must be >= 0"):
        watch(after_steps=-1)
    with pytest.raises(ValueError, match=r"fidelity_floor is a cosine, in \[-1, 1\]"):
        watch(fidelity_floor=2.0)


@pytest.mark.slow
def test_sideways_train_warns_of_a_stall_and_prints_the_train_loss(tmp_path, capsys):
    """tiny (sideways, 6 steps of 12 classes) is still at chance after 2 steps, and no unit
    below the top has fidelity 1 (floor 1.0; fidelity at steps 1, 3, 6: patience 3)."""
    cli.train_main(
        [
            f"--workdir={tmp_path}",
            "--gin_file=tiny",
            "--gin_param=train.stall_after=2",
            "--gin_param=train.fidelity_floor=1.0",
        ]
    )
    out = capsys.readouterr().out
    assert "step 2: train loss " in out  # (train.progress = False: a line per log_every)
    assert "warning: step 2: after 2 steps of sideways, the training loss" in out
    assert out.count("has not moved from chance") == 1
    for i, name in enumerate(["unit1", "unit2"], start=1):
        assert f"warning: step 6: unit {i} ('{name}') has had gradient fidelity below 1" in out
    assert "unit 3 (" not in out  # the top unit's gradient is exact: cosine 1


def stalled_fit(mode, **compile_kwargs):
    """A 3-class model whose logits stay 0 (a zero head, SGD at rate 0): loss ln 3 throughout."""
    import keras
    import numpy as np

    import sideways_tf as sw

    keras.utils.set_random_seed(0)
    units = [sw.Unit(keras.layers.Dense(6, "tanh"), name=f"u{i}") for i in range(3)]
    model = sw.SidewaysModel(
        units,
        topology="skip(2)" if mode == "skip_sideways" else "chain",
        head=keras.layers.Dense(3, kernel_initializer="zeros"),
        batch_size=2,
        frame_shape=(5,),
    )
    model.compile(optimizer=keras.optimizers.SGD(0.0), mode=mode, **compile_kwargs)
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(12, 10, 5)).astype("float32")
    labels = (np.arange(12) % 3).astype("int32")
    return model.fit(clips, labels, batch_size=2, epochs=1, verbose=0)


def test_fit_warns_once_when_a_sideways_loss_stays_at_chance():
    with pytest.warns(RuntimeWarning, match="has not moved from chance") as caught:
        stalled_fit("skip_sideways", stall_after=4)
    stalls = [w for w in caught if "has not moved" in str(w.message)]
    assert len(stalls) == 1 and "step 4: after 4 steps of skip_sideways" in str(stalls[0].message)


def test_fit_names_a_unit_whose_fidelity_stays_under_the_floor():
    with pytest.warns(RuntimeWarning, match=r"unit 1 \('u0'\) has had gradient fidelity below 1"):
        stalled_fit("sideways", stall_after=0, fidelity_every=1, fidelity_floor=1.0)


def test_fit_in_an_exact_mode_does_not_warn_of_a_stall():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stalled_fit("bptt", stall_after=4, fidelity_every=1, fidelity_floor=1.0)
    assert not [w for w in caught if "gradient fidelity below" in str(w.message)]
    assert not [w for w in caught if "has not moved" in str(w.message)]
