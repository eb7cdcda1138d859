"""Graceful stop on SIGTERM/SIGINT, armed before torch loads so that no signal is lost.

The first signal asks for a stop (checkpoint at the next step, state `stopped`); a
second one raises StopNow wherever the engine is. The launcher starts the engine
with these signals blocked, so one that arrives while the interpreter starts stays
pending until `arm()` has installed the handler.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class StopNow(Exception):
    """Leave at once, without a checkpoint (stop_now, or a second signal)."""


class StopSignals:
    def __init__(self):
        self.count = 0

    def arm(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    def _handle(self, signum, _frame) -> None:
        self.count += 1
        if self.count >= 2:
            raise StopNow(signal.Signals(signum).name)


SIGNALS = StopSignals()
