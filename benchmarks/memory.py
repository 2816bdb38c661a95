"""Peak resident memory of this process and every descendant (Ray's local workers included)."""

from __future__ import annotations

import threading

import psutil


class TreePeakRSS:
    """`with TreePeakRSS() as m: ...; m.peak_bytes` samples the process tree every `interval` s."""

    def __init__(self, interval: float = 0.25, pid: int | None = None) -> None:
        self.interval, self.peak_bytes, self.pid = interval, 0, pid
        self._stop = threading.Event()

    def _sample(self) -> int:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return 0
        total = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, self._sample())

    def __enter__(self) -> "TreePeakRSS":
        self.peak_bytes = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
