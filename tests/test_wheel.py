"""The package installed as a wheel (not editable) trains and evaluates from any directory."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow


def _run(args, cwd, timeout=600):
    env = dict(os.environ, PYTHONPATH="", PYTHONNOUSERSITE="1")
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_wheel_install_trains_and_evaluates_with_the_shipped_configs(tmp_path):
    # A copy of the source: building in place would leave build/ in the checkout.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__"),
    )
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    bin_dir = venv / "bin"
    site = subprocess.run(
        [
            str(bin_dir / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # The test environment's packages (TensorFlow, ...) without reinstalling them.
    with open(os.path.join(site, "test_env.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [str(bin_dir / "pip"), "install", "--no-deps", "--no-build-isolation", "--quiet", "."],
        cwd=source,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _run(
        [str(bin_dir / "python"), "-c", "import sideways_tf; print(sideways_tf.__file__)"],
        cwd=elsewhere,
    )
    assert where.strip().startswith(site), where  # the wheel, not the checkout

    workdir = str(tmp_path / "run")
    out = _run(
        [
            str(bin_dir / "sideways-train"),
            f"--workdir={workdir}",  # the default config: the quickstart, shipped in the wheel
            "--gin_param=train.num_steps = 2",
            "--gin_param=train.eval_every = 2",
            "--gin_param=train.checkpoint_every = 2",
            "--gin_param=train.fidelity_every = 0",
            "--gin_param=train.progress = False",
            "--gin_param=eval/moving_shapes_dataset.num_examples = 16",  # (one batch)
        ],
        cwd=elsewhere,
    )
    assert "Done: step 2" in out
    out = _run([str(bin_dir / "sideways-eval"), f"--workdir={workdir}"], cwd=elsewhere)
    assert out.startswith("step 2 (") and "ckpt-2): " in out and "'num_videos': 16" in out
    out = _run([str(bin_dir / "sideways-train"), "--help"], cwd=elsewhere, timeout=60)
    assert "experiments/moving_shapes_skip_sideways" in out
