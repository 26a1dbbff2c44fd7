"""Pipeline topologies: which earlier units each unit reads, and with what delay.

Notation of algorithm.md section 2: units are 1..L, source 0 is the input frame,
S(i) is a subset of {0, ..., i-1}, and an edge j -> i may carry an extra delay of
d >= 0 steps. Here an edge is the triple (source j, receiver i, delay d).

Descriptions accepted by `parse_topology`:
  "chain"             S(i) = {i-1}                    (plain Sideways)
  "skip(k)"           S(i) = {i-1, i-k} for i >= k    (Skip-Sideways, residual-style)
  "dense(w)"          S(i) = {i-1, ..., i-w}          (every unit reads the w below it)
  [(j, i), (j, i, d), ...]  an explicit edge list
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple


class Edge(NamedTuple):
    """One edge j -> i: unit `receiver` reads `source`'s output `delay` steps late."""

    source: int
    receiver: int
    delay: int = 0


class Topology(NamedTuple):
    """Validated edges of a pipeline of `num_units` units.

    `sources[i - 1]` lists the edges into unit i; its first edge is the primary
    input (the chain edge from i-1 when there is one), whose shape the fusion
    keeps.
    """

    num_units: int
    sources: tuple[tuple[Edge, ...], ...]

    @property
    def edges(self) -> tuple[Edge, ...]:
        return tuple(e for into in self.sources for e in into)

    @property
    def is_chain(self) -> bool:
        return all(
            len(into) == 1 and into[0].source == i - 1 and into[0].delay == 0
            for i, into in enumerate(self.sources, start=1)
        )

    def senders(self, i: int) -> list[int]:
        """Positions in sources[i - 1] of the edges from units (not the frame, j = 0):
        the inputs of unit i whose VJP goes back as a reply r_{i->j}."""
        return [k for k, e in enumerate(self.sources[i - 1]) if e.source > 0]

    def receivers(self, j: int) -> tuple[Edge, ...]:
        """Edges out of unit j (or the input, j = 0)."""
        return tuple(e for e in self.edges if e.source == j)

    def first_valid_step(self, i: int) -> int:
        """First step t (1-based) at which a_i[t] is built from real frames only.

        a_i[t] reads a_j[t-1-d] for every edge, and a_0[t-1] := x[t], so
        first(0) = 0 and first(i) = max_j first(j) + 1 + d_ji: the longest path.
        """
        first = [0]
        for into in self.sources:
            first.append(max(first[e.source] + 1 + e.delay for e in into))
        return first[i]

    @property
    def fill_steps(self) -> int:
        """T_fill: the longest path (in steps, delays included) from input to top."""
        return self.first_valid_step(self.num_units)

    def newest_lag(self, i: int) -> int:
        """How many steps old the newest frame mixed into a_i[t] is (t - newest frame).

        Along the shortest path: lag(0) = -1 (a_0[t-1] is x[t]), lag(i) = min_j
        lag(j) + 1 + d_ji; on the chain lag(i) = i - 1 (u_i[t] carries frame t-i+1).
        """
        lag = [-1]
        for into in self.sources:
            lag.append(min(lag[e.source] + 1 + e.delay for e in into))
        return lag[i]

    def describe(self) -> str:
        rows = []
        for i, into in enumerate(self.sources, start=1):
            srcs = ", ".join(
                ("x" if e.source == 0 else f"{e.source}") + (f"(+{e.delay})" if e.delay else "")
                for e in into
            )
            rows.append(f"  unit {i} <- {srcs}")
        return f"Topology(L={self.num_units}, T_fill={self.fill_steps})\n" + "\n".join(rows)


_PATTERN = re.compile(r"^\s*(chain|skip|dense)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$")


def parse_topology(description: str | Sequence, num_units: int) -> Topology:
    """Builds and validates a Topology from a short description or an edge list.

    String forms: "chain", "skip(k)", "skip(k, d)" (skip edges delayed by d more
    steps), "dense(w)". Edge lists hold (source, receiver) or (source, receiver,
    delay) integers, with units numbered 1..L and 0 for the input frame.
    Raises:
      ValueError: whenever `description` and `num_units` do not make a valid topology
        (also for values of the wrong type); the message names the problem and the fix.
    """
    if not _is_int(num_units) or num_units < 1:
        raise ValueError(
            f"A pipeline needs at least one unit: num_units must be an integer >= 1, "
            f"got {num_units!r}."
        )
    if isinstance(description, str):
        edges = _edges_from_string(description, num_units)
    elif isinstance(description, Iterable) and not isinstance(description, bytes):
        edges = [_edge(raw) for raw in description]
    else:
        raise ValueError(
            f"Topology {description!r} is neither a string ('chain', 'skip(2)', ...) nor a "
            "list of (source, receiver[, delay]) edges."
        )
    return _validate(edges, num_units)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _edge(raw) -> Edge:
    if (
        isinstance(raw, str | bytes)
        or not isinstance(raw, Sequence)
        or len(raw) not in (2, 3)
        or not all(_is_int(v) for v in raw)
    ):
        raise ValueError(
            f"Edge {raw!r} is not (source, receiver) or (source, receiver, delay) of "
            "integers; write edges like (0, 1), (1, 2), (0, 2, 1)."
        )
    return Edge(*(int(v) for v in raw))


def _edges_from_string(description: str, num_units: int) -> list[Edge]:
    match = _PATTERN.match(description)
    if not match:
        raise ValueError(
            f"Unknown topology {description!r}: use 'chain', 'skip(k)', 'skip(k, delay)', "
            "'dense(window)' or an explicit list of (source, receiver[, delay]) edges."
        )
    kind, arg, delay = match.group(1), match.group(2), match.group(3)
    chain = [Edge(i - 1, i) for i in range(1, num_units + 1)]
    if kind == "chain":
        if arg is not None:
            raise ValueError(f"'chain' takes no argument, got {description!r}.")
        return chain
    if arg is None:
        raise ValueError(f"{kind!r} needs an argument, e.g. '{kind}(2)'; got {description!r}.")
    k = int(arg)
    if kind == "skip":
        if k < 2:
            raise ValueError(
                f"skip(k) needs k >= 2 (skip(1) is the chain edge itself); got {description!r}."
            )
        if k >= num_units:
            raise ValueError(
                f"{description!r} on {num_units} units has no skip edge inside the network (an "
                f"edge spans k units, from unit i-k into unit i, with 1 <= i-k); it would "
                f"silently be a chain. Use skip(k) with 2 <= k <= {max(num_units - 1, 2)}"
                f"{'' if num_units > 2 else ' on more units'}, or 'chain'."
            )
        d = int(delay or 0)
        return chain + [Edge(i - k, i, d) for i in range(k, num_units + 1)]
    if delay is not None:
        raise ValueError(f"'dense(window)' takes one argument, got {description!r}.")
    if k < 1:
        raise ValueError(f"dense(window) needs window >= 1, got {description!r}.")
    return [Edge(i - w, i) for i in range(1, num_units + 1) for w in range(1, min(k, i) + 1)]


def _validate(edges: list[Edge], num_units: int) -> Topology:
    sources: list[list[Edge]] = [[] for _ in range(num_units)]
    seen = set()
    for e in edges:
        if not 1 <= e.receiver <= num_units:
            raise ValueError(
                f"Edge {tuple(e)} goes into unit {e.receiver}, but units are numbered "
                f"1..{num_units}; drop the edge or add units."
            )
        if e.source >= e.receiver:
            raise ValueError(
                f"Edge {tuple(e)} goes from unit {e.source} to the earlier or same unit "
                f"{e.receiver}: edges must go to a later unit (information flows up the "
                "pipeline; time already delays every edge by one step). Reverse or drop it."
            )
        if e.source < 0:
            raise ValueError(
                f"Edge {tuple(e)} has a negative source; use 0 for the input frame "
                f"and 1..{num_units} for units."
            )
        if e.delay < 0:
            raise ValueError(f"Edge {tuple(e)} has a negative delay; delays are >= 0 steps.")
        if (e.source, e.receiver) in seen:
            raise ValueError(f"Edge {e.source} -> {e.receiver} is listed twice; keep one.")
        seen.add((e.source, e.receiver))
        sources[e.receiver - 1].append(e)
    for i, into in enumerate(sources, start=1):
        if not into:
            raise ValueError(
                f"Unit {i} has no source: add an edge into it, e.g. ({i - 1}, {i}) "
                "for the chain edge."
            )
        # The primary input (whose shape the fusion keeps) is the nearest source.
        into.sort(key=lambda e: (-e.source, e.delay))
    for j in range(1, num_units):
        if not any(e.source == j for into in sources for e in into):
            raise ValueError(
                f"Unit {j} feeds no later unit, so its output is never used; "
                f"add an edge ({j}, {j + 1}) or remove the unit."
            )
    return Topology(num_units, tuple(tuple(into) for into in sources))
