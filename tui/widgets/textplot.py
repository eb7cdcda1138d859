"""Text drawing helpers shared by widgets: bars and sparklines that survive NO_COLOR."""

from __future__ import annotations

import math
from typing import Iterable

SPARK = "▁▂▃▄▅▆▇█"
EIGHTHS = " ▏▎▍▌▋▊▉"


def meter(fraction: float | None, width: int) -> str:
    """A bar of `width` cells: full blocks, one partial block, then light shade for the rest."""
    if width <= 0:
        return ""
    if fraction is None or not math.isfinite(fraction):
        return "·" * width
    fraction = min(1.0, max(0.0, fraction))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (EIGHTHS[part] if part and full < width else "")
    return bar + "░" * (width - len(bar))


def sparkline(values: Iterable[float | None], width: int, lo: float | None = None,
              hi: float | None = None) -> str:
    """The last `width` values as block heights; a missing value is a space."""
    vals = list(values)[-width:] if width > 0 else []
    finite = [v for v in vals if v is not None and math.isfinite(v)]
    if not finite:
        return " " * len(vals)
    lo = min(finite) if lo is None else lo
    hi = max(finite) if hi is None else hi
    span = hi - lo
    out = []
    for v in vals:
        if v is None or not math.isfinite(v):
            out.append(" ")
        elif span <= 0:
            out.append(SPARK[0])
        else:
            out.append(SPARK[min(7, max(0, int((v - lo) / span * 7.999)))])
    return "".join(out)
