"""Command lines: sideways-train and sideways-eval. Flags and gin, then one library call."""

from __future__ import annotations

import argparse
import os
import signal

import gin

# The repository root, so that --gin_file=gin/... works from any directory.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GIN_FILE = "gin/quickstart.gin"


def _parser(description: str, default_workdir: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--workdir",
        required=default_workdir is None,
        default=default_workdir,
        help="Where checkpoints, TensorBoard logs, config.gin and metrics go.",
    )
    parser.add_argument(
        "--gin_param", action="append", default=[], help="A gin binding, e.g. train.num_steps=100."
    )
    parser.add_argument(
        "--strategy",
        choices=["default", "mirrored", "multi_worker", "tpu"],
        help="tf.distribute strategy (gin: runtime.strategy). multi_worker reads TF_CONFIG.",
    )
    parser.add_argument(
        "--tpu", help="Cloud TPU name, or 'local' on a TPU VM (gin: runtime.tpu; implies tpu)."
    )
    return parser


def _runtime_params(args) -> list[str]:
    """--strategy and --tpu as gin bindings, after the user's own (flags win)."""
    params = []
    if args.strategy:
        params.append(f"runtime.strategy = {args.strategy!r}")
    if args.tpu:
        params += [f"runtime.tpu = {args.tpu!r}", "runtime.strategy = 'tpu'"]
    return params


def _parse_gin(files: list[str], params: list[str]):
    gin.add_config_file_search_path(_REPO_ROOT)
    import sideways_tf.distribute  # noqa: F401  (registers `runtime` for --strategy / --tpu)

    for f in files:
        if not os.path.exists(f) and not os.path.exists(os.path.join(_REPO_ROOT, f)):
            raise SystemExit(f"gin file {f!r} not found (looked in . and {_REPO_ROOT}).")
    gin.parse_config_files_and_bindings(files, params, skip_unknown=False)


def train_main(argv: list[str] | None = None):
    parser = _parser("Train a Sideways pipeline (gin-configured).", "/tmp/sideways_quickstart")
    parser.add_argument(
        "--gin_file",
        action="append",
        default=None,
        help=f"gin config file(s), applied in order (default: {DEFAULT_GIN_FILE}).",
    )
    parser.add_argument(
        "--allow_config_change",
        action="store_true",
        help="Resume a workdir with a config that differs from its config.gin.",
    )
    args = parser.parse_args(argv)
    _parse_gin(args.gin_file or [DEFAULT_GIN_FILE], args.gin_param + _runtime_params(args))
    from sideways_tf import checkpointing, train, workdir

    try:
        result = train.train(args.workdir, allow_config_change=args.allow_config_change)
    except KeyboardInterrupt:  # before the loop, or a second Ctrl-C: nothing new saved
        print(f"Interrupted; {args.workdir} keeps its last checkpoint. Run again to resume.")
        raise SystemExit(128 + signal.SIGINT) from None
    except (
        checkpointing.NonFiniteError,
        workdir.WorkdirLockedError,
        workdir.ConfigChangedError,
    ) as e:
        raise SystemExit(f"sideways-train: {e}") from None
    if result["interrupted"]:  # 130 for Ctrl-C, 143 for SIGTERM: not a success
        raise SystemExit(128 + signal.Signals[result["interrupted"]].value)
    print(f"Done: step {result['step']}, eval {result['eval']}. Workdir: {args.workdir}")
    print(f"TensorBoard: tensorboard --logdir {args.workdir}")


def eval_main(argv: list[str] | None = None):
    parser = _parser("Evaluate the latest checkpoint of a sideways-train workdir.")
    args = parser.parse_args(argv)
    gin.add_config_file_search_path(_REPO_ROOT)
    from sideways_tf import train

    result = train.evaluate_workdir(args.workdir, tuple(args.gin_param + _runtime_params(args)))
    print(f"step {result['step']}: {result['eval']}")
