"""describe(pipeline): one row per unit with shapes, parameters and FLOPs, then totals.

The FLOPs are those of sideways_tf.costs.unit_costs: per computation step, on
the pipeline's whole batch, forward (C_i then H_i, plus the head on the top
unit) and VJP (w.r.t. the unit's inputs and parameters). A pipelined step lasts
as long as the slowest unit's forward plus VJP (algorithm.md s.7), so the
`share` column is what to balance when placing units on devices.
"""

from __future__ import annotations

from sideways_tf import costs as costs_lib

_SCALES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"), (1.0, ""))


def _shape(shape) -> str:
    return "x".join(str(d) for d in shape[1:])  # drop the batch


def _sources(edges) -> str:
    return ",".join(
        ("x" if e.source == 0 else str(e.source)) + (f"(+{e.delay})" if e.delay else "")
        for e in edges
    )


def describe(pipeline) -> str:
    """A table of the pipeline's units: sources, input and output shapes, params, FLOPs.

    Shapes are per example ([H, W, C]); FLOPs are per computation step for the
    whole batch B. The last lines give the totals and the slowest unit.
    """
    costs = costs_lib.unit_costs(pipeline)
    total_fwd = sum(c.forward_flops for c in costs)
    total_vjp = sum(c.backward_flops for c in costs)
    total = total_fwd + total_vjp
    scale, prefix = next((s, p) for s, p in _SCALES if total_fwd >= s or s == 1.0)
    header = ("unit", "from", "input", "output", "params", f"fwd {prefix}FLOPs")
    header += (f"VJP {prefix}FLOPs", "share")
    rows = [header]
    for i, (unit, into, c) in enumerate(
        zip(pipeline.units, pipeline.topology.sources, costs), start=1
    ):
        rows.append(
            (
                unit.name,
                _sources(into),
                " + ".join(_shape(s) for s in unit.source_shapes),
                _shape(unit.output_shape_) + (" +head" if i == pipeline.num_units else ""),
                f"{c.params:,}",
                f"{c.forward_flops / scale:.2f}",
                f"{c.backward_flops / scale:.2f}",
                f"{100 * c.flops / total:.1f}%" if total else "-",
            )
        )
    rows.append(
        (
            "total",
            "",
            "",
            "",
            f"{sum(c.params for c in costs):,}",
            f"{total_fwd / scale:.2f}",
            f"{total_vjp / scale:.2f}",
            "100.0%",
        )
    )
    widths = [max(len(r[k]) for r in rows) for k in range(len(header))]
    left = 4  # unit, from, input and output are left-aligned, numbers right-aligned

    def fmt(row):
        cells = [
            cell.ljust(w) if k < left else cell.rjust(w)
            for k, (cell, w) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    frame = "x".join(str(d) for d in pipeline.frame_shape)
    lines = [
        f"{pipeline.name}: {pipeline.num_units} units, batch {pipeline.batch_size}, frames "
        f"{frame} -> logits {_shape(pipeline.top_output_shape)}, T_fill {pipeline.fill_steps}; "
        "FLOPs per step for the whole batch",
        fmt(rows[0]),
        *(fmt(r) for r in rows[1:-1]),
        fmt(rows[-1]),
    ]
    if total:
        slowest = max(range(len(costs)), key=lambda k: costs[k].flops)
        ratio = costs[slowest].flops / (total / len(costs))
        lines.append(
            f"slowest unit: {pipeline.units[slowest].name}, {ratio:.2f}x the mean "
            "(a pipelined step lasts as long as the slowest unit)"
        )
    return "\n".join(lines)
