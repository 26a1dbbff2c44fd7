"""Command lines: sideways-train, -eval and -export. Flags and gin, then one library call.

TensorFlow is imported only after the flags are parsed (`--help` is instant), with
its native start-up chatter (oneDNN, CUDA stubs) held back unless --verbosity > 0.
A mistake in the flags or the config ends the command with its message alone and
exit code 2, as argparse does for a bad flag; --verbosity 1 shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import inspect
import os
import re
import signal
import sys
import tempfile
import tokenize
import traceback

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
        help=(
            "0: quiet TensorFlow start-up, a mistake in the flags or config as one message "
            "(default); 1: TensorFlow's warnings and full tracebacks; 2: everything."
        ),
    )
    return parser


def _import_tensorflow(verbosity: int):
    """Imports TensorFlow at the log level asked for (unless TF_CPP_MIN_LOG_LEVEL is set).

    Its C++ start-up lines bypass that level, so at verbosity 0 they go to a
    temporary file, shown only if the import fails. The first look at the devices
    happens there too: on a machine without a GPU driver it logs "failed call to
    cuInit", an error line that means only "no GPU here"; other lines it logs are kept.
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
    with tempfile.TemporaryFile() as held:
        with _stderr_to(held):
            tensorflow.config.list_physical_devices()
        held.seek(0)
        lines = held.read().decode(errors="replace").splitlines(keepends=True)
        sys.stderr.write("".join(line for line in lines if not _NO_GPU.search(line)))


# What TensorFlow logs when it looks for a GPU on a machine without one: not a fault.
_NO_GPU = re.compile(r"failed call to cuInit|Could not find cuda drivers")


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

    paths = [config_files.resolve(f) for f in files]
    gin.parse_config_files_and_bindings(paths, params, skip_unknown=False)


@contextlib.contextmanager
def _reported(command: str, verbosity: int, on_interrupt: str | None = None):
    """Ends `command` with a message, not a traceback, when the user can fix the error.

    A mistake (see _is_mistake) prints "command: message" on stderr and exits 2 (UsageExit); at
    verbosity > 0 it propagates with its traceback. Ctrl-C prints `on_interrupt` and
    exits 130. A run that cannot go on (non-finite parameters, a locked workdir, a changed
    config) exits 1 with its message. Anything else propagates: a fault to report.
    """
    from sideways_tf import checkpointing, distribute, workdir

    try:
        yield
    except KeyboardInterrupt:
        if on_interrupt:
            print(on_interrupt)
        raise SystemExit(128 + signal.SIGINT) from None
    except (
        checkpointing.NonFiniteError,
        checkpointing.DiskFullError,
        distribute.PeerLostError,
        workdir.WorkdirLockedError,
        workdir.ConfigChangedError,
    ) as e:
        raise SystemExit(f"{command}: {e}") from None
    except Exception as e:
        if verbosity > 0 or not _is_mistake(e):
            raise
        message = f"{command}: {_message(e)}"
        print(message, file=sys.stderr)
        raise UsageExit(message) from None


class UsageExit(SystemExit):
    """Exit code 2, argparse's for a usage error; str() keeps the message for in-process callers."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self):
        return self.message


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_GIN_DIR = os.path.dirname(os.path.abspath(gin.__file__)) + os.sep


def _is_mistake(e: Exception) -> bool:
    """Whether `e` is about a setting or path the user gave, rather than a fault in the code.

    That is: a missing file; anything gin raises itself (a config file it cannot open or
    parse, an unknown configurable or parameter, a REQUIRED binding left out); and the
    ValueError, TypeError and KeyError of sideways_tf's checks of its settings (gin
    re-raises those with the binding's location appended). Told apart by the innermost
    frame that raised: the same types raised inside TensorFlow or Keras are not checks
    of a setting, and keep their traceback.
    """
    # gin's parser lets tokenize's error through (an unclosed bracket in a binding).
    if isinstance(e, (FileNotFoundError, tokenize.TokenError)):
        return True
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith("<")]
    origin = os.path.abspath(frames[-1].filename) if frames else ""
    if origin.startswith(_GIN_DIR):
        return True
    return origin.startswith(_PACKAGE_DIR) and isinstance(e, (ValueError, TypeError, KeyError))


# gin appends "In call to configurable 'train' (<function train at 0x...>)": the address goes.
_GIN_CALLABLE = re.compile(r" \(<(?:function|class) [^>]*>\)")
_UNKNOWN_PARAMETER = re.compile(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'")


def _message(e: Exception) -> str:
    """The text of a mistake, with where gin found it and, for a misspelled name, the fix."""
    if isinstance(e, tokenize.TokenError):
        return f"gin could not parse the config: {e.args[0]} (a bracket or quote left open?)"
    if isinstance(e, SyntaxError):  # gin's parser: the location is in the fields
        where = f'file "{e.filename}"' if e.filename else "bindings string"
        text = f"{e.msg}\n  In {where} line {e.lineno}"
        if e.text:  # gin's offset is the 0-based column of the token it could not take
            text += f"\n    {e.text.rstrip()}\n    {' ' * (e.offset or 0)}^"
        return text
    text = str(e)
    if isinstance(e, KeyError) and e.args and text.startswith(repr(e.args[0])):
        text = str(e.args[0]) + text[len(repr(e.args[0])) :]  # unquoted
    text = _GIN_CALLABLE.sub("", text)
    unknown = _UNKNOWN_PARAMETER.match(text)
    if unknown:
        text += _did_you_mean(*unknown.groups())
    return text


def _did_you_mean(selector: str, name: str) -> str:
    try:
        parameters = list(inspect.signature(gin.get_configurable(selector)).parameters)
    except (KeyError, TypeError, ValueError):
        return ""
    close = difflib.get_close_matches(name, parameters, n=1)
    if close:
        return f"\n  Did you mean {selector}.{close[0]}?"
    return f"\n  {selector} takes: {', '.join(parameters)}."


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
    # Ctrl-C before the loop, or a second one: nothing new saved.
    interrupted = f"Interrupted; {args.workdir} keeps its last checkpoint. Run again to resume."
    with _reported("sideways-train", args.verbosity, on_interrupt=interrupted):
        _parse_gin(args.gin_file or [DEFAULT_GIN_FILE], args.gin_param + _runtime_params(args))
        from sideways_tf import train

        result = train.train(args.workdir, allow_config_change=args.allow_config_change)
    if result["interrupted"]:  # 130 for Ctrl-C, 143 for SIGTERM: not a success
        raise SystemExit(128 + signal.Signals[result["interrupted"]].value)
    print(f"Done: step {result['step']}, eval {result['eval']}. Workdir: {args.workdir}")
    print(f"TensorBoard: tensorboard --logdir {args.workdir}")


def eval_main(argv: list[str] | None = None):
    parser = _parser("Evaluate the latest checkpoint of a sideways-train workdir.")
    parser.add_argument(
        "--protocols",
        default="",
        help=(
            "Also the field's classification protocols, comma-separated: multiview (N clips "
            "x 3 crops per video, N = clip_sampling.multiview_clips) and / or streaming (each "
            "video run once, frame by frame); reported apart (multiview_*, streaming_*)."
        ),
    )
    args = parser.parse_args(argv)
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    unknown = sorted(set(protocols) - {"multiview", "streaming"})
    if unknown:
        parser.error(f"--protocols: unknown {unknown}; choose from multiview, streaming.")
    _import_tensorflow(args.verbosity)
    with _reported("sideways-eval", args.verbosity):
        from sideways_tf import evaluate

        result = evaluate.evaluate_workdir(
            args.workdir, tuple(args.gin_param + _runtime_params(args)), protocols=protocols
        )
    print(f"step {result['step']} ({result['checkpoint']}): {result['eval']}")
    print(result["headline"])


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
    with _reported("sideways-export", args.verbosity):
        from sideways_tf import export

        metadata = export.export(args.workdir, args.output, batch_size=args.batch_size)
    if metadata["replaced"]:
        print(f"Replaced the previous export in {args.output} ({', '.join(metadata['replaced'])}).")
    print(
        f"Exported step {metadata['checkpoint_step']} (checkpoint {metadata['checkpoint']}) to "
        f"{args.output}: the {metadata['network']} network of mode {metadata['mode']} (reads "
        f"{metadata['reads']}), frames {[args.batch_size, *metadata['frame_shape']]}, "
        f"fill_steps {metadata['fill_steps']}."
    )
    if args.tflite:
        print(f"TFLite: {export.convert_tflite(args.output)}")
