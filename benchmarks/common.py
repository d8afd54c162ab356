"""Timing, budgets, device description and the JSON/table report shared by the benchmark suites.

Timing: CUDA events around the work after a ``torch.cuda.synchronize`` on a GPU, ``time.perf_counter`` on CPU;
``warmup`` untimed calls first (they absorb torch.compile, cuDNN autotuning and CUDA-graph capture), then the
median of ``repeats`` timed calls. Every figure is higher-is-better (steps/s, images/s, × real time) and is stored
with the eager float32 figure of the same benchmark measured in the same process, and their ratio.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"

__all__ = [
    "Budget",
    "Row",
    "Report",
    "Target",
    "time_call",
    "median",
    "device_info",
    "data_root",
    "snr_db",
    "sync",
    "run_variant",
]


# --------------------------------------------------------------------------------------------------------------
# Time


class Budget:
    """A wall-clock allowance for a suite: ``left()`` seconds remain; ``allows(s)`` says whether ``s`` more fit.

    ``clock`` is injectable so tests can drive it."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds = float(seconds)
        self.clock = clock
        self.start = clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Iterable[float]) -> float:
    values = list(values)
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def time_call(
    fn: Callable[[], Any],
    device: torch.device | str,
    *,
    warmup: int = 1,
    repeats: int = 3,
    budget: Budget | None = None,
    clock: Callable[[], float] = time.perf_counter,
    cpu_times: list[float] | None = None,
) -> list[float]:
    """Seconds of each of ``repeats`` timed calls of ``fn`` after ``warmup`` untimed ones.

    On CUDA each call is bracketed by events after a synchronize, so the time is the GPU's; on CPU by ``clock``.
    With a ``budget``, stops repeating (after at least one timed call) once the next call would not fit.
    ``cpu_times``, when given, receives the process CPU seconds (all threads) of each timed CPU call: unlike wall
    time, they barely change when other processes compete for the cores.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    for i in range(repeats):
        if i and budget is not None and not budget.allows(times[-1] * 1.2):
            break
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            c0, t0 = time.process_time(), clock()
            fn()
            times.append(clock() - t0)
            if cpu_times is not None:
                cpu_times.append(time.process_time() - c0)
    return times


def snr_db(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    """10·log10(Σ ref² / Σ (ref − est)²) in dB over all elements (inf when equal)."""
    ref = reference.detach().double().flatten()
    err = ref - estimate.detach().double().flatten()
    noise = float(err.pow(2).sum())
    signal = float(ref.pow(2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


# --------------------------------------------------------------------------------------------------------------
# Machine


def cpu_name() -> str:
    """The CPU's model name (lscpu's), or what platform knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
        return set(line.split())
    except OSError:
        return set()


def device_info(device: torch.device | str) -> dict[str, Any]:
    """Name and capabilities of the device and software versions, for the report."""
    device = torch.device(device)
    flags = _cpu_flags()
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_bf16": sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f"}),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        info["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=torch.cuda.get_device_name(device),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            capability=f"{props.major}.{props.minor}",
        )
    else:
        info["name"] = info["cpu"]
    return info


def data_root() -> Path:
    """The shared data folder: $DIFF_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("DIFF_DATA", REPO.parent / "shared" / "data"))


# --------------------------------------------------------------------------------------------------------------
# Report


@dataclass
class Row:
    """One measured figure. ``value`` is higher-is-better in ``unit``; ``baseline`` is the eager fp32 figure of the
    same benchmark in the same run and ``ratio = value / baseline``."""

    benchmark: str
    variant: str
    batch: int
    unit: str
    value: float | None
    baseline: float | None = None
    ratio: float | None = None
    seconds: list[float] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Target:
    """A goal of the issue: ``measured >= goal``? (``None`` when it was not measured)."""

    name: str
    goal: float
    measured: float | None
    unit: str

    @property
    def met(self) -> bool | None:
        return None if self.measured is None else bool(self.measured >= self.goal)


class Report:
    """Rows and targets of one suite run; prints a table and writes ``benchmarks/results/<device>_<date>.json``."""

    def __init__(self, suite: str, device: torch.device | str, argv: list[str] | None = None):
        self.suite = suite
        self.device = torch.device(device)
        self.info = device_info(self.device)
        self.argv = list(sys.argv if argv is None else argv)
        self.started = _dt.datetime.now()
        self.rows: list[Row] = []
        self.targets: list[Target] = []
        self.messages: list[str] = []

    def add(self, row: Row) -> Row:
        baseline = self.baseline(row.benchmark, row.batch)
        if row.value is not None and baseline and row.baseline is None:
            row.baseline = baseline
        if row.value is not None and row.baseline:
            row.ratio = row.value / row.baseline
        self.rows.append(row)
        print(self._line(row), flush=True)
        return row

    def baseline(self, benchmark: str, batch: int) -> float | None:
        """The eager fp32 figure of ``benchmark`` at ``batch`` (the row whose settings say ``baseline``)."""
        for r in self.rows:
            if r.benchmark == benchmark and r.batch == batch and r.settings.get("baseline") and r.value is not None:
                return r.value
        return None

    def best(self, benchmark: str, batch: int | None = None) -> Row | None:
        rows = [r for r in self.rows if r.benchmark == benchmark and r.value is not None
                and (batch is None or r.batch == batch)]
        return max(rows, key=lambda r: r.value) if rows else None

    def note(self, message: str) -> None:
        self.messages.append(message)
        print(f"# {message}", flush=True)

    def target(self, name: str, goal: float, measured: float | None, unit: str) -> None:
        self.targets.append(Target(name, goal, measured, unit))

    @staticmethod
    def _fmt(x: float | None, digits: int = 3) -> str:
        if x is None:
            return "-"
        if not isinstance(x, (int, float)):
            return str(x)
        if x == 0 or not math.isfinite(x):
            return str(x)
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.0f}"

    def _line(self, r: Row) -> str:
        tail = f"ERROR {r.error.splitlines()[-1][:90]}" if r.error else ""
        dev = r.notes.get("log_mel_l1"), r.notes.get("snr_db")
        dev_s = f"L1 {self._fmt(dev[0])} SNR {self._fmt(dev[1])}" if dev[0] is not None else ""
        return (f"{r.benchmark:<30} {r.variant:<38} {r.batch:>4} {self._fmt(r.value):>10} {r.unit:<11} "
                f"{self._fmt(r.ratio):>6}x {dev_s} {tail}")

    def table(self) -> str:
        head = f"{'benchmark':<30} {'variant':<38} {'batch':>4} {'value':>10} {'unit':<11} {'ratio':>7} deviation"
        lines = [f"{self.suite} suite on {self.info.get('name')} (torch {self.info['torch']}), "
                 f"{self.started:%Y-%m-%d %H:%M}", head, "-" * len(head)]
        lines += [self._line(r) for r in self.rows]
        if self.targets:
            lines += ["", "targets:"]
            for t in self.targets:
                state = {True: "MET", False: "not met", None: "not measured"}[t.met]
                lines.append(f"  {t.name:<58} goal {self._fmt(t.goal):>8} {t.unit:<11} measured "
                             f"{self._fmt(t.measured):>8}  {state}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "date": self.started.isoformat(timespec="seconds"),
            "elapsed_s": round((_dt.datetime.now() - self.started).total_seconds(), 1),
            "command": self.argv,
            "device": self.info,
            "results": [asdict(r) for r in self.rows],
            "targets": [dict(asdict(t), met=t.met) for t in self.targets],
            "messages": self.messages,
        }

    def path(self, directory: Path = RESULTS_DIR) -> Path:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", str(self.info.get("name", self.device.type))).strip("-").lower()
        return directory / f"{self.suite}_{slug}_{self.started:%Y-%m-%d_%H%M}.json"

    def write(self, directory: Path = RESULTS_DIR) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = self.path(directory)
        path.write_text(json.dumps(_finite(self.to_dict()), indent=2, default=_json_default) + "\n")
        return path


def _finite(x: Any) -> Any:
    """Non-finite floats as strings ("inf"), so that the file is standard JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _json_default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (torch.dtype, torch.device, Path)):
        return str(x)
    return repr(x)


def run_variant(report: Report, row: Row, fn: Callable[[], None], device: torch.device | str) -> Row:
    """Run ``fn`` (which fills ``row``), turning any exception into ``row.error`` so the suite goes on; frees
    GPU memory after an out-of-memory error."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - a benchmark must never take the suite down
        row.value = None
        row.error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    return report.add(row)


# --------------------------------------------------------------------------------------------------------------
# Memory


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory error (CUDA's, or a CPU allocation failure)."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "alloc_failed" in text)


@dataclass
class BatchSearch:
    """Result of :func:`largest_batch`: the largest batch that ran, the smallest that failed (None if none did),
    every trial as (batch, ok), and why the search stopped."""

    largest_ok: int | None
    smallest_failed: int | None
    trials: list[tuple[int, bool]]
    stopped: str


def largest_batch(
    trial: Callable[[int], None],
    start: int,
    *,
    cap: int,
    seconds: float,
    resolution: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    cleanup: Callable[[], None] | None = None,
) -> BatchSearch:
    """The largest batch in [start, cap] for which ``trial(batch)`` runs without running out of memory.

    Doubles from ``start`` until a trial fails with an OOM (see :func:`is_oom`; other errors propagate), then
    bisects between the last success and the first failure. Stops when the bracket is narrower than
    max(1, ``resolution`` · last success) (0: exact), at ``cap``, or when
    ``seconds`` have passed (then the bracket so far is returned). ``cleanup`` runs after every trial (e.g. to
    empty the CUDA cache). Assumes memory grows with the batch.
    """
    t0 = clock()
    trials: list[tuple[int, bool]] = []
    ok: int | None = None
    bad: int | None = None

    def attempt(b: int) -> bool:
        try:
            trial(b)
            success = True
        except Exception as e:  # noqa: BLE001
            if not is_oom(e):
                raise
            success = False
        finally:
            if cleanup is not None:
                cleanup()
        trials.append((b, success))
        return success

    b = start
    while True:
        if clock() - t0 > seconds:
            return BatchSearch(ok, bad, trials, "time")
        if attempt(b):
            ok = b
            if b >= cap:
                return BatchSearch(ok, bad, trials, "cap")
            b = min(2 * b, cap)
        else:
            bad = b
            break
    while True:
        lo = ok if ok is not None else 0
        if bad - lo <= max(1, int(lo * resolution)):
            break
        if clock() - t0 > seconds:
            return BatchSearch(ok, bad, trials, "time")
        mid = (lo + bad) // 2
        if attempt(mid):
            ok = mid
        else:
            bad = mid
    return BatchSearch(ok, bad, trials, "bracket")
