"""Peak resident memory of this process and every descendant (Ray's local workers included)."""

from __future__ import annotations

import threading

import psutil


class TreePeakRSS:
    """`with TreePeakRSS() as m: ...; m.peak_bytes` samples the process tree every `interval` s.

    peak_bytes: the largest sum over the tree; peak_process_bytes: the largest single process's RSS, by
    process title (`ray::TrainController`, `ray::RayTrainWorker...`, the driver's command line)."""

    def __init__(self, interval: float = 0.25, pid: int | None = None) -> None:
        self.interval, self.peak_bytes, self.pid = interval, 0, pid
        self.peak_process_bytes: dict[str, int] = {}
        self._stop = threading.Event()

    def _sample(self) -> int:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return 0
        total = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                rss, title = p.memory_info().rss, " ".join(p.cmdline())[:60] or p.name()
            except psutil.Error:
                continue
            total += rss
            self.peak_process_bytes[title] = max(self.peak_process_bytes.get(title, 0), rss)
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


def run_cli_measured(*args: str) -> tuple[dict, float, int]:
    """`python -m puma_ray.cli ARGS` in a child process with its own local Ray (RAY_ADDRESS unset).

    Returns (its JSON summary, wall seconds, peak RSS bytes of the child's whole process tree).
    """
    import json
    import os
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "puma_ray.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    with TreePeakRSS(pid=proc.pid) as mem:
        stdout, stderr = proc.communicate()
    summary = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {"ok": False, "error": stderr[-3000:]}
    if not summary.get("ok"):
        raise SystemExit(f"puma-ray {args[0]} failed: {summary.get('error')}")
    return summary, time.perf_counter() - t0, mem.peak_bytes
