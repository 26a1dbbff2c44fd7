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
