"""Panels of the GPU screen: one card per GPU, the host, and the honest no-GPU panel."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.widgets import Static

from engine.hardware import process_label
from tui.widgets.textplot import meter, sparkline

HISTORY = 300  # samples kept for sparklines: five minutes at the default 1 s


def _v(value, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _pct(used, total) -> float | None:
    return used / total if used is not None and total else None


class History:
    """Recent samples per key, bounded."""

    def __init__(self) -> None:
        self.values: dict[str, deque] = {}

    def add(self, key: str, value: float | None) -> None:
        self.values.setdefault(key, deque(maxlen=HISTORY)).append(value)

    def get(self, key: str) -> list:
        return list(self.values.get(key, ()))


class GpuCard(Static):
    """Name, memory bar, utilisation, temperature, power, clocks, capability, processes, history."""

    DEFAULT_CSS = """
    GpuCard { height: auto; border: round $accent; padding: 0 1; }
    """

    def __init__(self, index: int, **kwargs):
        super().__init__(**kwargs)
        self.index = index
        self.gpu: dict = {}
        self.history: History | None = None

    def show(self, gpu: dict, history: History) -> None:
        self.gpu = gpu
        self.history = history
        self.border_title = f"GPU {gpu.get('index')} · {gpu.get('name') or 'unknown'}"
        self.border_subtitle = "MIG on" if gpu.get("mig") else ""
        self.refresh(layout=True)

    def render(self) -> Text:
        g = self.gpu
        if not g:
            return Text("reading…")
        width = max(20, self.content_size.width or 76)
        t = Text(no_wrap=True, overflow="ellipsis")
        used, total = g.get("memory_used_mib"), g.get("memory_total_mib")
        frac = _pct(used, total)
        mem_text = (f" {used / 1024:5.1f}/{total / 1024:.1f} GiB {frac * 100:3.0f}%" if frac is not None
                    else " memory n/a")
        t.append("mem  ")
        t.append(meter(frac, max(8, width - 5 - len(mem_text))))
        t.append(mem_text + "\n")
        util = g.get("utilization_pct")
        util_text = f" {_v(util, '%'):>4}"
        t.append("util ")
        t.append(meter(None if util is None else util / 100, max(8, width - 5 - len(util_text))))
        t.append(util_text + "\n")
        t.append(
            f"temp {_v(g.get('temperature_c'), 'C')}  power {_v(g.get('power_w'), '', 0)}/"
            f"{_v(g.get('power_limit_w'), ' W', 0)}  SM {_v(g.get('sm_clock_mhz'))}/"
            f"{_v(g.get('sm_clock_max_mhz'), ' MHz')}  mem clk {_v(g.get('mem_clock_mhz'), ' MHz')}\n"
        )
        bf16 = g.get("bf16")
        t.append(f"compute {_v(g.get('compute_capability'))}  bf16 "
                 f"{'n/a' if bf16 is None else 'yes' if bf16 else 'no (use fp16)'}  "
                 f"fan {_v(g.get('fan_pct'), '%')}\n")
        if self.history is not None:
            half = max(4, (width - 14) // 2)
            t.append("util ")
            t.append(sparkline(self.history.get(f"gpu{self.index}.util"), half, 0, 100))
            t.append("  mem ")
            t.append(sparkline(self.history.get(f"gpu{self.index}.mem"), half, 0, 1))
            t.append("\n")
        for inst in g.get("mig_instances") or []:
            t.append(f"MIG {inst.get('slot')}: {inst.get('name') or 'n/a'} "
                     f"{_v(inst.get('memory_used_mib'))}/{_v(inst.get('memory_total_mib'), ' MiB')}\n")
        procs = g.get("processes")
        if procs is None:
            t.append(f"processes: cannot be read ({g.get('unavailable', {}).get('processes', 'unknown')})\n",
                     "italic")
        elif not procs:
            t.append("processes: none\n", "italic")
        else:
            for p in procs[:4]:
                mem = "n/a" if p.get("memory_mib") is None else f"{p['memory_mib'] / 1024:.1f}G"
                who = p.get("user") or "?"
                t.append(f"{p['pid']:>7} {who[:10]:<10} {mem:>6}  {process_label(p)}\n")
            if len(procs) > 4:
                t.append(f"… and {len(procs) - 4} more processes\n", "italic")
        missing = g.get("unavailable") or {}
        if missing:
            t.append("unavailable: " + ", ".join(f"{k} ({v})" for k, v in sorted(missing.items())), "italic")
        t.rstrip()
        return t


class HostPanel(Static):
    """CPU, RAM and the free disk of the workspace, with CPU and RAM history."""

    DEFAULT_CSS = """
    HostPanel { height: auto; border: round $panel-lighten-2; padding: 0 1; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.host: dict = {}
        self.history: History | None = None

    def show(self, host: dict, history: History) -> None:
        self.host = host
        self.history = history
        self.border_title = f"Host · {host.get('hostname', '?')}"
        self.refresh(layout=True)

    def render(self) -> Text:
        h = self.host
        if not h:
            return Text("reading…")
        width = max(20, self.content_size.width or 76)
        t = Text(no_wrap=True, overflow="ellipsis")
        cpu = h.get("cpu_pct")
        cpu_text = f" {_v(cpu, '%', 0):>4} of {h.get('cpu_count', '?')} CPUs"
        t.append("cpu  ")
        t.append(meter(None if cpu is None else cpu / 100, max(8, width - 5 - len(cpu_text))))
        t.append(cpu_text + "\n")
        used, total = h.get("ram_used_mib"), h.get("ram_total_mib")
        frac = _pct(used, total)
        ram_text = f" {used / 1024:5.1f}/{total / 1024:.1f} GiB" if frac is not None else " n/a"
        t.append("ram  ")
        t.append(meter(frac, max(8, width - 5 - len(ram_text))))
        t.append(ram_text + "\n")
        free, disk_total = h.get("disk_free_gib"), h.get("disk_total_gib")
        t.append(f"disk {_v(free, ' GiB', 1)} free of {_v(disk_total, ' GiB', 1)} at {h.get('disk_path', '?')}\n")
        load = h.get("load_avg")
        t.append(f"load {' '.join(f'{x:.2f}' for x in load) if load else 'n/a'}  {h.get('cpu_model') or ''}")
        if self.history is not None:
            half = max(4, (width - 14) // 2)
            t.append("\ncpu  ")
            t.append(sparkline(self.history.get("host.cpu"), half, 0, 100))
            t.append("  ram ")
            t.append(sparkline(self.history.get("host.ram"), half, 0, 1))
        return t


class NoGpuPanel(Static):
    """No driver, no GPU or no permission: says which, and that training falls back to the CPU."""

    DEFAULT_CSS = """
    NoGpuPanel { height: auto; border: round $warning; padding: 0 1; }
    """

    def show(self, reason: str) -> None:
        self.border_title = "No NVIDIA GPU"
        self.update(Text(
            f"{reason}.\n\nEverything else works: plan, data review, evaluation of small models, "
            "and training with the CPU. `tunedeck gpu --json` reports the same for scripts."
        ))
