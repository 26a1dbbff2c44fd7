"""Command lines: sideways-train, -eval and -export. Flags and gin, then one library call.

TensorFlow is imported only after the flags are parsed (`--help` is instant), with
its native start-up chatter (oneDNN, CUDA stubs) held back unless --verbosity > 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile

import gin

from sideways_tf import config_files

DEFAULT_GIN_FILE = "quickstart"


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
    parser.add_argument(
        "--verbosity",
        type=int,
        default=0,
        help="0: quiet TensorFlow start-up (default); 1: its warnings; 2: everything.",
    )
    return parser


def _import_tensorflow(verbosity: int):
    """Imports TensorFlow at the log level asked for (unless TF_CPP_MIN_LOG_LEVEL is set).

    Its C++ start-up lines bypass that level, so at verbosity 0 they go to a
    temporary file, shown only if the import fails.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", str(max(0, 2 - verbosity)))
    if verbosity > 0 or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401

        return
    with tempfile.TemporaryFile() as held, _stderr_to(held):
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            held.seek(0)
            sys.__stderr__.write(held.read().decode(errors="replace"))
            raise


@contextlib.contextmanager
def _stderr_to(file):
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _runtime_params(args) -> list[str]:
    """--strategy and --tpu as gin bindings, after the user's own (flags win)."""
    params = []
    if args.strategy:
        params.append(f"runtime.strategy = {args.strategy!r}")
    if args.tpu:
        params += [f"runtime.tpu = {args.tpu!r}", "runtime.strategy = 'tpu'"]
    return params


def _parse_gin(files: list[str], params: list[str]):
    import sideways_tf.distribute  # noqa: F401  (registers `runtime` for --strategy / --tpu)

    try:
        paths = [config_files.resolve(f) for f in files]
    except FileNotFoundError as e:
        raise SystemExit(f"sideways-train: {e}") from None
    gin.parse_config_files_and_bindings(paths, params, skip_unknown=False)


def train_main(argv: list[str] | None = None):
    parser = _parser("Train a Sideways pipeline (gin-configured).", "/tmp/sideways_quickstart")
    parser.add_argument(
        "--gin_file",
        action="append",
        default=None,
        help=(
            "gin config(s), applied in order: a shipped name such as "
            f"experiments/moving_shapes_skip_sideways, or a path (default: {DEFAULT_GIN_FILE})."
        ),
    )
    parser.add_argument(
        "--allow_config_change",
        action="store_true",
        help="Resume a workdir with a config that differs from its config.gin.",
    )
    args = parser.parse_args(argv)
    _import_tensorflow(args.verbosity)
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
    _import_tensorflow(args.verbosity)
    from sideways_tf import evaluate

    result = evaluate.evaluate_workdir(args.workdir, tuple(args.gin_param + _runtime_params(args)))
    print(f"step {result['step']}: {result['eval']}")


def export_main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(
        description="Export a sideways-train workdir as a streaming SavedModel (one frame a step)."
    )
    parser.add_argument("--workdir", required=True, help="The sideways-train workdir to export.")
    parser.add_argument("--output", required=True, help="Directory for the SavedModel.")
    parser.add_argument(
        "--batch_size", type=int, default=1, help="Streams served at once (the state's batch)."
    )
    parser.add_argument(
        "--tflite", action="store_true", help="Also write output/model.tflite (the step)."
    )
    parser.add_argument("--verbosity", type=int, default=0, help="As for sideways-train.")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}.")
    _import_tensorflow(args.verbosity)
    from sideways_tf import export

    try:
        metadata = export.export(args.workdir, args.output, batch_size=args.batch_size)
    except FileNotFoundError as e:
        raise SystemExit(f"sideways-export: {e}") from None
    print(
        f"Exported step {metadata['checkpoint_step']} to {args.output}: frames "
        f"{[args.batch_size, *metadata['frame_shape']]}, fill_steps {metadata['fill_steps']}."
    )
    if args.tflite:
        print(f"TFLite: {export.convert_tflite(args.output)}")
