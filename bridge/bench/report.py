"""Bench rows as aligned text tables (people) or one JSON object per line (tools)."""

from __future__ import annotations

import json
from typing import Any


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths)), "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
        return f"{value / 1e6:.2f} MB" if value >= 100_000 else str(value)
    return str(value)


def json_lines(table: str, rows: list[dict[str, Any]]) -> str:
    """One JSON object per row, each naming its table; numbers stay numbers (bytes in bytes)."""
    return "\n".join(json.dumps({"table": table, **row}, sort_keys=False) for row in rows)
