"""The gin configs that ship with sideways_tf (package data), found by name or by path.

    base.gin -> models/*.gin, data/*.gin -> experiments/*.gin -> quickstart.gin, tiny.gin
    runtime/*.gin   strategies and placements, layered on any experiment

A config is named relative to sideways_tf/configs, with or without ".gin"
("experiments/moving_shapes_skip_sideways"), or given as a path. Inside gin files,
`include 'sideways_tf:base.gin'` names a shipped file: a gin file reader for the
"sideways_tf:" prefix, registered on `import sideways_tf`, opens it from the
package wherever it is installed and whatever the current directory holds.
(In a source checkout, the top-level `gin/` is a link to sideways_tf/configs.)
"""

from __future__ import annotations

import logging
import os

import gin

DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
PREFIX = "sideways_tf:"


def _shipped(path: str) -> bool:
    return path.startswith(PREFIX) and os.path.isfile(os.path.join(DIR, path[len(PREFIX) :]))


def _open_shipped(path: str):
    return open(os.path.join(DIR, path[len(PREFIX) :]))


def register():
    """Lets gin open "sideways_tf:<name>.gin" (idempotent; done on `import sideways_tf`)."""
    gin.config.register_file_reader(_open_shipped, _shipped)
    root = logging.getLogger()
    if not any(isinstance(f, _QuietShipped) for f in root.filters):
        root.addFilter(_QuietShipped())


class _QuietShipped(logging.Filter):
    """Drops gin's "Path not found: sideways_tf:..." (its package reader, tried first)."""

    def filter(self, record):
        return not record.getMessage().startswith("Path not found: " + PREFIX)


def names() -> list[str]:
    """Every shipped config, e.g. "experiments/ucf101_skip_sideways"."""
    found = []
    for root, _, files in os.walk(DIR):
        for f in files:
            if f.endswith(".gin"):
                found.append(os.path.relpath(os.path.join(root, f), DIR)[: -len(".gin")])
    return sorted(found)


def resolve(name: str) -> str:
    """The file for a config name or path; raises listing what exists."""
    candidates = [name, name + ".gin"]
    for prefix in ("gin/", "gin" + os.sep):  # the source checkout's link
        if name.startswith(prefix):
            candidates += [name[len(prefix) :], name[len(prefix) :] + ".gin"]
    if name.startswith(PREFIX):
        candidates.append(name[len(PREFIX) :])
    for c in list(candidates):
        candidates.append(os.path.join(DIR, c))
    for c in candidates:
        if os.path.isfile(c):
            return os.path.abspath(c)
    shown = ", ".join(n for n in names() if "/" not in n or n.startswith("experiments/"))
    raise FileNotFoundError(
        f"gin config {name!r} not found (as a path, or by name in {DIR}). Shipped configs: "
        f"{shown}; and models/, data/, runtime/ parts."
    )
