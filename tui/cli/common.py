"""What every command shares: the one-line error, JSON output, number formats, heavy engine modules run as subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys


class CliError(Exception):
    pass


def print_json(obj, ascii: bool = True) -> None:
    """Indented JSON; `ascii=False` keeps non-ASCII text readable (datasets), where all text is printable."""
    print(json.dumps(obj, indent=2, default=str, ensure_ascii=ascii))


def fmt(x, spec=".4g") -> str:
    return "-" if x is None else format(x, spec) if isinstance(x, (int, float)) else str(x)


def duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def exit_code(status: dict) -> int:
    return 0 if status.get("state") in ("completed", "stopped") else 1


def engine_subprocess(module: str, *argv: str) -> str:
    """Run a heavy engine module in its own process (the command line never imports torch);
    its last stdout line is returned, its one-line error becomes ours."""

    result = subprocess.run([sys.executable, "-m", module, *argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("error: ")]
        raise CliError(errors[-1][len("error: "):] if errors else f"{module} failed: {lines[-1] if lines else '?'}")
    return result.stdout.strip().splitlines()[-1]
