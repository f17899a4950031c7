"""Peak memory of the export, per stage, sampled from /proc.

The kernel's own peak (VmHWM, `ru_maxrss`) counts the file pages a process has mapped:
the exporter and llama.cpp's converter read the 13.5 GB of LLaMA shards memory-mapped,
so that figure approaches the model's size although those pages are page cache the
kernel reclaims at will. What the export needs is its anonymous memory (RssAnon), so
both are sampled, for the exporter and for its child processes.
"""

import ctypes
import gc
import threading
import time
from pathlib import Path

_ACTIVE = None  # the sampler of the running export, if any


def phase(name: str) -> None:
    """Attribute what follows to `name` (within the current stage), when sampling."""
    if _ACTIVE is not None:
        _ACTIVE.stage = f"{_ACTIVE.stage_name}: {name}" if _ACTIVE.stage_name else name


def release() -> None:
    """Collect garbage and hand freed heap back to the kernel: between engines the exporter
    otherwise keeps the previous engine's high-water mark (glibc keeps freed arenas)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _status_kb(pid: str) -> tuple:
    anon = file = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1])
            elif line.startswith(("RssFile:", "RssShmem:")):
                file += int(line.split()[1])
    except (OSError, ValueError):
        pass
    return anon, file


def _children() -> list:
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += (task / "children").read_text().split()
        except OSError:
            pass
    return pids


class MemorySampler:
    def __init__(self, interval_s: float = 0.25):
        self.interval_s, self.stage, self.stage_name = interval_s, "start", ""
        self.peaks: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def begin(self, stage: str) -> None:
        self.stage = self.stage_name = stage

    def __enter__(self):
        global _ACTIVE
        _ACTIVE = self
        self._thread.start()
        return self

    def __exit__(self, *exc):
        global _ACTIVE
        _ACTIVE = None
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            own = _status_kb("self")
            kids = [_status_kb(p) for p in _children()]
            sample = {"exporter_anon": own[0], "exporter_rss": own[0] + own[1],
                      "children_anon": sum(a for a, _ in kids), "children_rss": sum(a + f for a, f in kids)}
            peak = self.peaks.setdefault(self.stage, dict.fromkeys(sample, 0))
            for key, kb in sample.items():
                peak[key] = max(peak[key], kb)
            time.sleep(self.interval_s)

    def report(self) -> dict:
        """GB per stage, and the overall peaks."""
        gb = {stage: {k: round(v / 1e6, 2) for k, v in p.items()} for stage, p in self.peaks.items()}
        overall = {k: max(p[k] for p in gb.values()) for k in next(iter(gb.values()), {})}
        return {"per_stage_gb": gb, "peak_gb": overall,
                "note": "anon = memory the export needs; rss adds mapped file pages (page cache)"}
