"""The README's Keras snippet runs as written."""

import os
import re

import keras
import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_the_keras_snippet_runs_as_written(tmp_path, monkeypatch):
    text = open(README, encoding="utf-8").read()
    snippet = re.search(r"<!-- keras-snippet -->\n```python\n(.*?)```", text, re.S).group(1)
    assert len(snippet.strip().splitlines()) < 20
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(snippet.replace("/tmp/sideways.keras", "sideways.keras"), "README", "exec"), scope)
    assert (
        isinstance(scope["model"], keras.Model)
        and scope["model"].engine.mode.name == "skip_sideways"
    )
    assert scope["logits"].shape == (16, 12) and np.all(np.isfinite(scope["logits"]))
    assert os.path.exists(tmp_path / "sideways.keras")


def test_the_own_model_snippet_cuts_trains_and_exports_as_written(tmp_path, monkeypatch):
    import json

    import tensorflow as tf

    from sideways_tf import cut

    text = open(README, encoding="utf-8").read()
    snippet = re.search(r"<!-- own-model-snippet -->\n```python\n(.*?)```", text, re.S).group(1)
    assert "keras.applications.MobileNetV2" in snippet and "export.export(model" in snippet
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(snippet.replace("/tmp/own_model", "own_model"), "README", "exec"), scope)
    model = scope["model"]
    assert model.engine.mode.name == "skip_sideways" and model.pipeline.num_units == 4
    assert not any(cut.batch_norm_layers(u.module) for u in model.pipeline.units)
    assert np.isfinite(model.history.history["loss"][0])

    meta = json.loads((tmp_path / "own_model" / "sideways_export.json").read_text())
    assert (meta["batch_size"], meta["num_classes"], meta["mode"]) == (1, 12, "skip_sideways")
    # The exported step (one stream) gives the trained model's outputs on the same frames
    # (to 1e-4: MobileNetV2's layers at batch 1 and at batch 2 round differently).
    frames, _ = next(iter(scope["clips"]))
    expected = model.pipeline(frames, training=False).numpy()[0]  # [K, 12] of clip 0
    saved = tf.saved_model.load(str(tmp_path / "own_model"))
    state = saved.signatures["init_state"]()
    for k in range(frames.shape[1]):
        state = saved.signatures["step"](frame=frames[:1, k], **state)
        np.testing.assert_allclose(state.pop("outputs")[0], expected[k], rtol=1e-4, atol=1e-4)
