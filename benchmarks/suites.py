"""The variant lists and section order of the two suites (run_gpu.py, run_cpu.py), and their common flags.

Each inference speed-up has a ``--no-…`` flag that removes every variant using it; the eager fp32 baseline always runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_diffwave import TrainVariant, VocodeVariant  # noqa: E402
from benchmarks.bench_unet import ForwardVariant  # noqa: E402
from diffcore.inference import InferenceConfig  # noqa: E402

__all__ = ["flags", "vocode_variants", "train_variants", "forward_variants", "configure_torch"]


def flags(description: str, budget: float) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--budget", type=float, default=budget, help="wall-clock seconds for the whole suite")
    p.add_argument("--smoke", action="store_true",
                   help="every benchmark for 1-2 iterations with tiny models and shapes, on CPU")
    p.add_argument("--no-bf16", action="store_true", help="no bf16 autocast variants")
    p.add_argument("--no-channels-last", action="store_true", help="no channels-last variants")
    p.add_argument("--no-compile", action="store_true", help="no torch.compile variants")
    p.add_argument("--no-graphs", action="store_true", help="no CUDA-graph variants")
    p.add_argument("--no-fused-adam", action="store_true", help="no fused-Adam variants")
    p.add_argument("--no-cache", action="store_true", help="no conditioner-cache variants (DiffWave)")
    p.add_argument("--no-allocator", action="store_true", help="leave glibc malloc as it is (CPU)")
    p.add_argument("--threads", type=int, default=None, help="intra-op CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="folder for the JSON result")
    p.add_argument("--only", default="", help="comma-separated section names to run (default: all)")
    return p


def configure_torch(args: argparse.Namespace) -> None:
    """Suite-wide settings, recorded in the report: cuDNN autotuning on (every variant, the baseline included:
    shapes are fixed, as in lmnt's and diffusers' training loops), enough torch.compile cache entries for every
    variant and shape."""
    torch.backends.cudnn.benchmark = True
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, 64)
    if hasattr(dynamo_config, "accumulated_recompile_limit"):
        dynamo_config.accumulated_recompile_limit = 512
    if args.threads:
        torch.set_num_threads(args.threads)


def _keep(args: argparse.Namespace, *, bf16=False, cl=False, compile=False, graphs=False, fused=False,
          cache=False, alloc=False) -> bool:
    return not ((bf16 and args.no_bf16) or (cl and args.no_channels_last) or (compile and args.no_compile)
                or (graphs and args.no_graphs) or (fused and args.no_fused_adam) or (cache and args.no_cache)
                or (alloc and args.no_allocator))


def _fc(precision: str, cl: bool, compile: bool, graphs: bool, cache: bool, allocator: bool) -> InferenceConfig:
    return InferenceConfig(precision=precision, channels_last=cl, compile="on" if compile else "off",
                           cuda_graphs=graphs, condition_cache="on" if cache else "off", tune_allocator=allocator)


def vocode_variants(args: argparse.Namespace, which: str = "all", cpu: bool = False) -> list[VocodeVariant]:
    """``which``: ``all`` (every lever alone and stacked), ``best`` (the baseline, the fastest without compiling and
    the fastest). On CPU the stack adds the allocator and the conditioner cache; on GPU, CUDA graphs."""
    alloc = cpu and not args.no_allocator
    out = [VocodeVariant("eager fp32 (reference)", InferenceConfig.reference(), baseline=True)]
    specs: list[tuple[str, dict, dict]] = []
    if cpu:
        # the fastest first, so that a tight budget never skips it; the rest take the levers apart
        specs += [
            ("bf16 + channels-last + cache + compile",
             dict(precision="bf16", cl=True, compile=True, graphs=False, cache=True),
             dict(bf16=True, cl=True, compile=True, cache=True)),
            ("bf16 + channels-last + cond cache",
             dict(precision="bf16", cl=True, compile=False, graphs=False, cache=True),
             dict(bf16=True, cl=True, cache=True)),
            ("bf16", dict(precision="bf16", cl=False, compile=False, graphs=False, cache=False), dict(bf16=True)),
            ("fp32 + malloc tuning", dict(precision="fp32", cl=False, compile=False, graphs=False, cache=False),
             dict(alloc=True)),
            ("fp32 + channels-last + cache + compile",
             dict(precision="fp32", cl=True, compile=True, graphs=False, cache=True),
             dict(cl=True, compile=True, cache=True)),
            ("bf16 + channels-last + compile",
             dict(precision="bf16", cl=True, compile=True, graphs=False, cache=False),
             dict(bf16=True, cl=True, compile=True)),
        ]
        if which == "best":
            specs = specs[:2]
    else:
        specs += [
            ("bf16", dict(precision="bf16", cl=False, compile=False, graphs=False, cache=False), dict(bf16=True)),
            ("bf16 + channels-last", dict(precision="bf16", cl=True, compile=False, graphs=False, cache=False),
             dict(bf16=True, cl=True)),
            ("bf16 + channels-last + CUDA graphs",
             dict(precision="bf16", cl=True, compile=False, graphs=True, cache=False),
             dict(bf16=True, cl=True, graphs=True)),
            ("bf16 + channels-last + compile",
             dict(precision="bf16", cl=True, compile=True, graphs=False, cache=False),
             dict(bf16=True, cl=True, compile=True)),
            ("bf16 + channels-last + compile + CUDA graphs",
             dict(precision="bf16", cl=True, compile=True, graphs=True, cache=False),
             dict(bf16=True, cl=True, compile=True, graphs=True)),
        ]
        if which == "best":
            specs = [s for s in specs if s[0] in ("bf16 + channels-last + CUDA graphs",
                                                  "bf16 + channels-last + compile + CUDA graphs")]
    for name, kw, uses in specs:
        if _keep(args, **uses):
            out.append(VocodeVariant(name, _fc(allocator=alloc, **kw)))
    return out


def train_variants(args: argparse.Namespace, kind: str = "diffwave") -> list[TrainVariant]:
    """fp32 eager (baseline), bf16, bf16 + channels-last, + compile, + fused Adam (the U-Net list folds the last
    two together to save compile time)."""
    specs = [
        TrainVariant("eager fp32 (reference)", baseline=True),
        TrainVariant("bf16", precision="bf16"),
        TrainVariant("bf16 + channels-last", precision="bf16", channels_last=True),
    ]
    if kind == "diffwave":
        specs += [
            TrainVariant("bf16 + channels-last + compile", precision="bf16", channels_last=True, compile=True),
            TrainVariant("bf16 + channels-last + compile + fused Adam", precision="bf16", channels_last=True,
                         compile=True, fused_adam=True),
        ]
    else:
        specs += [
            TrainVariant("bf16 + channels-last + compile + fused Adam", precision="bf16", channels_last=True,
                         compile=True, fused_adam=True),
        ]
    return [v for v in specs if v.baseline or _keep(args, bf16=v.precision == "bf16", cl=v.channels_last,
                                                    compile=v.compile, fused=v.fused_adam)]


def forward_variants(args: argparse.Namespace, cpu: bool = False) -> list[ForwardVariant]:
    specs = [
        ForwardVariant("eager fp32 NCHW (reference)", InferenceConfig.reference(), baseline=True),
        ForwardVariant("bf16 + channels-last", _fc("bf16", True, False, False, False, cpu and not args.no_allocator)),
    ]
    if not cpu:
        specs += [
            ForwardVariant("bf16 + channels-last + compile", _fc("bf16", True, True, False, False, False)),
            ForwardVariant("bf16 + channels-last + compile + CUDA graphs", _fc("bf16", True, True, True, False, False)),
        ]
    keep = []
    for v in specs:
        c = v.config
        if v.baseline or _keep(args, bf16=c.precision == "bf16", cl=c.channels_last, compile=c.compile == "on",
                               graphs=c.cuda_graphs):
            keep.append(v)
    return keep
