"""Samples the machine's 1-minute load average during a benchmark, so a result can say how busy the
machine was (other processes on a shared 2-core box slow a run's wall time, not its CPU time)."""
from __future__ import annotations

import os
import threading


class LoadMonitor:
    def __init__(self, every_s: float = 30.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> float:
        """Mean 1-minute load average over the samples taken (the current one if the run was short)."""
        self._stop.set()
        return sum(self.samples) / len(self.samples) if self.samples else os.getloadavg()[0]
