"""A terminal line plot drawn with braille dots: 2x4 points per cell, readable at 80x24.

Drawing costs in proportion to the widget's area, not to the length of the
run: it is handed downsampled points (see tui.follow.BucketSeries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.text import Text
from textual.widget import Widget

from tui.follow import fmt_num

# Braille dot bits by (column, row) inside a cell.
_DOTS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


@dataclass(frozen=True)
class PlotSeries:
    """One curve: points are (x, y, ...) tuples; `marker` draws each point as that glyph instead of a line."""

    label: str
    points: list[tuple[float, ...]]
    marker: str | None = None


class BraillePlot(Widget):
    """Curves with a y-axis label at the top and bottom and the x range underneath."""

    COMPONENT_CLASSES = {"plot--line", "plot--marker", "plot--axis"}

    DEFAULT_CSS = """
    BraillePlot {
        height: 1fr;
        border: round $panel-lighten-2;
        border-title-color: $text;
        padding: 0;
    }
    BraillePlot > .plot--line { color: $accent; }
    BraillePlot > .plot--marker { color: $warning; text-style: bold; }
    BraillePlot > .plot--axis { color: $text-muted; }
    """

    def __init__(self, title: str = "", empty: str = "no data yet", *, id: str | None = None,
                 classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.border_title = title
        self.empty = empty
        self.series: list[PlotSeries] = []

    def set_series(self, series: list[PlotSeries]) -> None:
        self.series = series
        self.refresh()

    def render(self) -> Text:
        width, height = self.content_size.width, self.content_size.height
        axis_style = self.get_component_rich_style("plot--axis")
        drawn = [s for s in self.series if s.points]
        if not drawn or width < 12 or height < 2:
            return Text(self.empty, style=axis_style, justify="center")
        xs = [p[0] for s in drawn for p in s.points]
        ys = [p[1] for s in drawn for p in s.points]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        if y1 - y0 < 1e-12 * max(1.0, abs(y1)):
            pad = abs(y1) * 0.05 or 1.0
            y0, y1 = y0 - pad, y1 + pad
        top, bottom = fmt_num(y1), fmt_num(y0)
        gutter = max(len(top), len(bottom)) + 1
        rows = height - 1  # the last line names the x range
        cols = width - gutter
        if cols < 4 or rows < 1:
            return Text(self.empty, style=axis_style)
        pw, ph = cols * 2, rows * 4
        cells = [[0] * cols for _ in range(rows)]
        marks: dict[tuple[int, int], str] = {}

        def px(x: float) -> int:
            return 0 if x1 == x0 else min(pw - 1, int((x - x0) / (x1 - x0) * (pw - 1) + 0.5))

        def py(y: float) -> int:  # 0 is the top row of dots
            return min(ph - 1, max(0, int((y1 - y) / (y1 - y0) * (ph - 1) + 0.5)))

        def dot(cx: int, cy: int) -> None:
            cells[cy // 4][cx // 2] |= _DOTS[cx % 2][cy % 4]

        for s in drawn:
            if s.marker:
                for p in s.points:
                    marks[(py(p[1]) // 4, px(p[0]) // 2)] = s.marker
                continue
            prev: tuple[int, int] | None = None
            for p in s.points:
                cx, cy = px(p[0]), py(p[1])
                if prev is None:
                    dot(cx, cy)
                else:
                    # Join to the previous point so sparse points and steep drops read as a line.
                    dx, dy = cx - prev[0], cy - prev[1]
                    steps = max(abs(dx), abs(dy), 1)
                    for i in range(1, steps + 1):
                        dot(prev[0] + round(dx * i / steps), prev[1] + round(dy * i / steps))
                prev = (cx, cy)

        line_style = self.get_component_rich_style("plot--line")
        mark_style = self.get_component_rich_style("plot--marker")
        out = Text(no_wrap=True, overflow="crop")
        for r in range(rows):
            label = top if r == 0 else bottom if r == rows - 1 else ""
            out.append(label.rjust(gutter - 1) + "┤" if label else " " * (gutter - 1) + "│", axis_style)
            for c in range(cols):
                mark = marks.get((r, c))
                if mark:
                    out.append(mark, mark_style)
                else:
                    bits = cells[r][c]
                    out.append(chr(0x2800 + bits) if bits else " ", line_style)
            out.append("\n")
        left, right = _x_label(x0), _x_label(x1)
        legend = "  ".join(f"{s.marker or '⠿'} {s.label}" for s in drawn) if len(drawn) > 1 else ""
        room = cols - len(left) - len(right)
        middle = legend.center(room) if 0 < len(legend) <= room - 2 else " " * max(0, room)
        out.append(" " * gutter + left + middle + right, axis_style)
        return out


def _x_label(x: float) -> str:
    if not math.isfinite(x):
        return "?"
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"
