"""The data layout: training imports neither PyAV nor the offline preparation package."""

import subprocess
import sys

TRAINING_IMPORTS = """
import sys
import sideways_tf, sideways_tf.train, sideways_tf.data.moving_shapes
prepare = sorted(m for m in sys.modules if m.startswith("sideways_tf.data.prepare"))
print("av" in sys.modules, prepare)
"""

# The converter first, in a fresh interpreter: an import loop through sideways_tf.data
# would fail here (dmvr <- prepare.convert <- ...), whatever order the tests use.
PREPARE_FIRST = """
import sideways_tf.data.prepare.convert
import sideways_tf.data.prepare.decode, sideways_tf.data.prepare.ucf101
import sideways_tf.data, sideways_tf.data.ucf101
print("ok")
"""


def run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_training_imports_neither_pyav_nor_the_converter():
    assert run(TRAINING_IMPORTS) == "False []"


def test_the_converter_imports_on_its_own():
    assert run(PREPARE_FIRST) == "ok"
