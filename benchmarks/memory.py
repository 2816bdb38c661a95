"""Peak resident memory of this process and every descendant (Ray's local workers included)."""

from __future__ import annotations

import threading

import psutil


class TreePeakRSS:
    """`with TreePeakRSS() as m: ...; m.peak_bytes` samples the process tree every `interval` s.

    peak_bytes: the largest sum over the tree; peak_process_bytes: the largest single process's RSS, by
    process title (`ray::TrainController`, `ray::RayTrainWorker...`, the driver's command line).
    With pss=True also peak_pss_bytes and peak_process_pss: the same with each process's proportional set
    size, which counts a shared page (Ray's object store is mapped by every worker) once across the
    tree instead of once per process that maps it; reading it costs more (smaps: ~1/4 of a core at
    0.25 s with ~20 processes), so it is opt-in and wants a longer interval."""

    def __init__(self, interval: float = 0.25, pid: int | None = None, pss: bool = False) -> None:
        self.interval, self.peak_bytes, self.pid, self.pss = interval, 0, pid, pss
        self.peak_process_bytes: dict[str, int] = {}
        self.peak_pss_bytes, self.peak_process_pss = 0, {}
        self._stop = threading.Event()

    def _sample(self) -> int:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return 0
        total, total_pss = 0, 0
        for p in [root, *root.children(recursive=True)]:
            try:
                rss, title = p.memory_info().rss, " ".join(p.cmdline())[:60] or p.name()
                pss = p.memory_full_info().pss if self.pss else 0
            except psutil.Error:
                continue
            total, total_pss = total + rss, total_pss + pss
            self.peak_process_bytes[title] = max(self.peak_process_bytes.get(title, 0), rss)
            if self.pss:
                self.peak_process_pss[title] = max(self.peak_process_pss.get(title, 0), pss)
        self.peak_pss_bytes = max(self.peak_pss_bytes, total_pss)
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


def run_cli_measured(*args: str, pss: bool = False, interval: float = 0.25) -> tuple[dict, float, "TreePeakRSS"]:
    """`python -m puma_ray.cli ARGS` in a child process with its own local Ray (RAY_ADDRESS unset).

    Returns (its JSON summary, wall seconds, the sampler of the child's whole process tree: peak_bytes,
    peak_process_bytes, and with pss=True the PSS figures).
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
    with TreePeakRSS(interval=interval, pid=proc.pid, pss=pss) as mem:
        stdout, stderr = proc.communicate()
    summary = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {"ok": False, "error": stderr[-3000:]}
    if not summary.get("ok"):
        raise SystemExit(f"puma-ray {args[0]} failed: {summary.get('error')}")
    return summary, time.perf_counter() - t0, mem
