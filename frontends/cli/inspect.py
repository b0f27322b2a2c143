"""``privacy-bridge inspect``: a Program as a readable table."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bridge.ir import Program, validate_program


def summary(program: Program, weights: Mapping[str, np.ndarray] | None = None) -> str:
    shapes = validate_program(program)
    graph, placement = program.graph, program.placement
    # One row per graph input and per node; "inputs" names values, each the "output" of a row above.
    rows = [("node", "op", "inputs", "output", "output shape", "params")]
    for name, spec in graph.inputs.items():
        owner = placement.input_owners.get(name, "?")
        rows.append((name, f"input (owner {owner})", "", name, str((None, *spec.feature_shape)), "0"))
    total = 0
    for node in graph.nodes:
        count = sum(int(np.prod(graph.parameters[p].shape)) for p in node.params.values())
        total += count
        attrs = node.op.model_dump(exclude={"kind"})
        op = node.op.kind + (f" {attrs}" if attrs else "")
        rows.append((node.name, op, ", ".join(node.inputs), node.output, str((None, *shapes[node.output])),
                     str(count)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"Program {program.name!r}  schema v{program.schema_version}  opset v{program.opset_version}  "
             f"privacy={program.privacy.value}"]
    lines.append(f"numerics: Z_2^{program.numerics.ring_bits}, {program.numerics.frac_bits} fractional bits, "
                 f"comparisons on {program.numerics.compare_bits} bits")
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"{counts(program)}; total parameters: {total}"
                 + (f" ({len(weights)} tensors loaded)" if weights else ""))
    lines.append("placement:")
    for party in placement.parties:
        lines.append(f"  {party.name:14s} {', '.join(sorted(r.value for r in party.roles))}")
    lines.append(f"  parameters owned by {placement.param_owner}; outputs to "
                 + ", ".join(f"{o} -> {list(r)}" for o, r in placement.output_receivers.items()))
    return "\n".join(lines)


def counts(program: Program) -> str:
    """"1 input + 4 nodes = 5 rows": how ``inspect`` and ``export`` both count a Program."""
    n_in, n_nodes = len(program.graph.inputs), len(program.graph.nodes)
    return (f"{n_in} input{'s' if n_in != 1 else ''} + {n_nodes} node{'s' if n_nodes != 1 else ''} "
            f"= {n_in + n_nodes} rows")
