"""The ``diffimage`` command: ``diffimage <command> [options]`` (``python -m diffimage`` does the same).

    train        train from a recipe through diffcore's engine (resumable; run it under torchrun to scale out)
    sample       images from a trained model (DDPM, DDIM or Heun; guidance and classes; a grid and/or PNG files)
    evaluate     bits/dim on held-out images (discretised ELBO) and FID/KID against a reference set
    export       a run's EMA weights -> config.json + model.safetensors
    quickstart   digits from the shipped model; then synthetic shapes -> the tiny U-Net trained on the CPU -> a DDIM
                 grid and bits/dim

A mistake the user can fix (a bad recipe, a missing file, a class the model does not have) is one line
``error: ...`` with exit status 2; ``--debug`` (or ``DIFFSTACK_DEBUG=1``) shows the traceback. Output files are
written atomically; long work shows a progress bar.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from diffcore.atomic import write_json
from diffcore.cli import UsageError, run_subcommands, train_command

__all__ = ["main", "COMMANDS"]


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"diffimage {command}", description=description, allow_abbrev=False)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, metavar="PATH",
                   help="run folder, checkpoint (.pt), export folder, or the name of a shipped model (mnist-small)")
    p.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu or cuda[:N] (default: auto)")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", choices=("ddim", "ddpm", "heun", "dpmpp"), default=None,
                   help="default: the model recipe's sample.sampler (ddim unless set); dpmpp is DPM-Solver++(2M), "
                        "one network evaluation per step")
    p.add_argument("--steps", type=int, default=None,
                   help="sampling steps (default: the recipe's, else ddim 50, heun 18, dpmpp 20, ddpm all T)")
    p.add_argument("--eta", type=float, default=None, help="DDIM stochasticity (default 0: deterministic)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance for class-conditional models (1: none; default: the recipe's)")
    p.add_argument("--seed", type=int, default=0,
                   help="the batch starting at image i uses seed + i (so with --batch-size 1, image i is seed + i)")
    p.add_argument("--batch-size", type=int, default=64, help="images per sampling run (default: 64)")


_FILE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".json"}


def _sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    from diffcore.cli import check_number, check_output_dir
    from diffcore.device import resolve_device

    # Every numeric option finite and in range before the model is loaded (NaN --eta wrote a black grid).
    check_number("--steps", args.steps, 1, 100_000)
    check_number("--batch-size", args.batch_size, 1, 4096)
    check_number("--eta", args.eta, 0, 10)
    check_number("--guidance-scale", args.guidance_scale, -1000, 1000)
    check_number("--seed", args.seed, 0, 2**63 - 1)
    for option in ("n", "nrow", "num_images", "num_samples", "reference_limit"):
        check_number(f"--{option.replace('_', '-')}", getattr(args, option, None), 1, 100_000)
    resolve_device(args.device)
    check_output_dir(args.out)  # a file, a path under a file or a read-only folder: found before any sampling
    out = Path(args.out)
    if out.suffix.lower() in _FILE_SUFFIXES and not out.is_dir():  # `--out x.png` used to make a folder x.png
        raise UsageError(f"--out {args.out}: names a folder (the images, grid.png and manifest.json are written "
                         f"into it), but it looks like an image file name; give a folder, e.g. --out "
                         f"{out.with_suffix('') if out.stem else 'samples'}")
    return dict(sampler=args.sampler, steps=args.steps, eta=args.eta, guidance_scale=args.guidance_scale)


def _check_model_options(args: argparse.Namespace, model, metrics: set[str] = frozenset()) -> None:
    """Options the loaded model cannot honour, refused before any work."""
    if args.guidance_scale is not None and args.guidance_scale != 1.0 and model.num_classes is None:
        raise UsageError("--guidance-scale is for class-conditional models; this model is unconditional")
    if model.config.diffusion.edm is not None:
        if args.sampler not in (None, "heun", "dpmpp"):
            raise UsageError(f"--sampler {args.sampler} walks a discrete VP schedule; this is an EDM model "
                             f"(Karras et al. preconditioning): use --sampler heun or dpmpp")
        if "nll" in metrics:
            raise UsageError("--metrics nll: the likelihood bound needs a discrete VP schedule, and this is an EDM "
                             "model; use --metrics fid,kid")


def _parse_classes(text: str | None, n: int, num_classes: int | None) -> list[int] | None:
    if text is None:
        return None
    if num_classes is None:
        raise UsageError("--class is for class-conditional models; this model is unconditional")
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--class takes integers separated by commas, got {text!r}") from None
    if not values:
        raise UsageError("--class needs at least one class")
    bad = [v for v in values if not -1 <= v < num_classes]
    if bad:
        raise UsageError(f"class {bad[0]} does not exist: the model has classes 0..{num_classes - 1} (-1: none)")
    return [values[i % len(values)] for i in range(n)]


# --------------------------------------------------------------------------------------------------- train


def _checked_task(recipe):
    from diffimage.task import ImageTask

    task = ImageTask(recipe)
    task.train_dataset()  # a data problem (missing file, wrong image size) is reported before the run starts
    return task


def cmd_train(argv: list[str]) -> int:
    from diffimage.recipe import load_image_recipe

    return train_command(
        argv, prog="diffimage train", data_help="shortcut for data.source=auto data.path=PATH (.npz or folder)",
        load_recipe=load_image_recipe, make_task=_checked_task,
        description="Train the DDPM U-Net from a recipe. A run folder that already holds a checkpoint is resumed "
                    "(its config.yaml is the recipe when --recipe is left out). Scale out with torchrun "
                    "--nproc_per_node=N -m diffimage train ...")


# --------------------------------------------------------------------------------------------------- sample


def cmd_sample(argv: list[str]) -> int:
    from tqdm.auto import tqdm

    from diffimage.api import load
    from diffimage.outputs import SampleInterrupted, check_sample_folder, sampling_interrupts, write_sample_outputs
    from diffimage.sample import resolved_options

    p = _parser("sample", "Generate images with a trained model and write them as one grid PNG and/or one PNG "
                "per image.")
    _add_model(p)
    p.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
    _add_sampling(p)
    p.add_argument("--class", dest="classes", metavar="K[,K...]",
                   help="class(es) of a conditional model, cycled over the images (-1: unconditional; "
                        "default: 0, 1, ..., K-1, 0, ..., or, for a model with a class prior such as a "
                        "cluster-conditioned one, labels drawn from it)")
    p.add_argument("--out", "-o", default="samples", metavar="DIR", help="output folder (default: samples/)")
    p.add_argument("--format", choices=("grid", "images", "both"), default="grid",
                   help="grid.png, one PNG per image, or both (default: grid)")
    p.add_argument("--nrow", type=int, default=None, help="images per grid row (default: about sqrt(n))")
    args = p.parse_args(argv)
    if args.n < 1:
        raise UsageError("--n must be at least 1")
    options = _sampling_options(args)
    model = load(args.model, args.device)
    _check_model_options(args, model)
    classes = _parse_classes(args.classes, args.n, model.num_classes)
    out = Path(args.out)
    check_sample_folder(out)  # another tool's grid.png/manifest.json: refused before any sampling
    done = [0]

    def on_batch(k: int) -> None:
        done[0] += k
        bar.update(k)

    try:  # a signal while sampling: nothing is written yet, so say so and stop (130/143)
        with tqdm(total=args.n, desc="sample", unit="img", disable=None) as bar, \
                sampling_interrupts(out, args.n, lambda: done[0]):
            images = model.sample_seeded(args.n, args.seed, args.batch_size, on_batch=on_batch, classes=classes,
                                         **options)
            manifest = {"model": model.source, "n": args.n, "seed": args.seed, "batch_size": args.batch_size,
                        **resolved_options(model.sample_defaults, model.config, **options),
                        "classes": "prior" if classes is None and model.config.class_prior is not None else classes}
        written = write_sample_outputs(images, out, args.format, manifest, nrow=args.nrow)
    except SampleInterrupted as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{args.n} image(s) from {model!r} -> {', '.join(str(w) for w in written)}")
    return 0


# --------------------------------------------------------------------------------------------------- evaluate


def cmd_evaluate(argv: list[str]) -> int:
    from diffimage.api import load
    from diffimage.evaluate import default_cache_dir, evaluate_model, small_feature_network
    from diffimage.grid import save_grid

    p = _parser("evaluate", "Bits/dim of held-out images (the discretised variational bound of Ho et al. 2020: T "
                "network evaluations per batch of images) and FID/KID of generated images against a reference set "
                "(Inception-v3 features; reference statistics cached).")
    _add_model(p)
    p.add_argument("--metrics", default="nll,fid,kid",
                   help="comma-separated subset of nll, fid, kid (default: all three)")
    p.add_argument("--data", metavar="PATH",
                   help="held-out images for bits/dim (.npz or folder; default: the model recipe's data.holdout "
                        "images, or the test split of a torchvision source)")
    p.add_argument("--num-images", type=int, default=64,
                   help="images scored for bits/dim (default: 64; each batch costs T network evaluations)")
    p.add_argument("--reference", metavar="PATH",
                   help="FID/KID reference set (.npz or folder; default: the model recipe's training images)")
    p.add_argument("--reference-limit", type=int, default=None,
                   help="use this many reference images, spread over the set (default: all)")
    p.add_argument("--num-samples", type=int, default=1000,
                   help="generated images for FID/KID (default: 1000; papers use 50000)")
    _add_sampling(p)
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="reference statistics cache (default: $DIFF_CACHE or ~/.cache/diffstack/fid)")
    p.add_argument("--out", "-o", default="evaluation", metavar="DIR",
                   help="writes metrics.json and samples.png here (default: evaluation/)")
    p.add_argument("--feature", choices=("inception", "small"), default="inception", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    metrics = {m.strip() for m in args.metrics.split(",") if m.strip()}
    unknown = metrics - {"nll", "fid", "kid"}
    if unknown or not metrics:
        raise UsageError(f"--metrics takes nll, fid and/or kid, got {args.metrics!r}")
    if args.num_images < 1 or args.num_samples < 2:
        raise UsageError("--num-images must be at least 1 and --num-samples at least 2")
    options = _sampling_options(args)
    model = load(args.model, args.device)
    _check_model_options(args, model, metrics)
    out_dir = Path(args.out)
    cache = args.cache_dir or default_cache_dir()
    result, samples = evaluate_model(
        model, metrics, data=args.data, num_images=args.num_images, reference=args.reference,
        reference_limit=args.reference_limit, num_samples=args.num_samples, seed=args.seed,
        batch_size=args.batch_size, sampling=options, cache_dir=cache,
        feature_extractor=small_feature_network() if args.feature == "small" else None,
        log=lambda line: print(line, file=sys.stderr), progress=sys.stderr.isatty())
    if samples is not None:
        save_grid(samples[:64], out_dir / "samples.png")
    write_json(out_dir / "metrics.json", result)
    if "nll" in result:
        r = result["nll"]
        err = f" ± {r['stderr']:.3f}" if r["stderr"] is not None else ""
        print(f"bits/dim: {r['bits_per_dim']:.4f}{err} ({r['num_images']} images)")
    if "generation" in result:
        r = result["generation"]
        if "fid" in r:
            print(f"FID: {r['fid']:.3f} ({r['num_samples']} samples vs {r['num_reference']} reference images)")
        if "kid" in r:
            print(f"KID: {r['kid']:.5f} ± {r['kid_std']:.5f}")
    print(f"results in {out_dir / 'metrics.json'}")
    return 0


# --------------------------------------------------------------------------------------------------- export


def cmd_export(argv: list[str]) -> int:
    from diffimage.api import export_run

    p = _parser("export", "Export a run's EMA weights as config.json + model.safetensors.")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="a run folder (its latest checkpoint) or a .pt file")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="the export folder")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                   help="weights as stored (fp32, default) or cast to float16 (half the file; loaded as float32)")
    args = p.parse_args(argv)
    model, out = export_run(args.source, args.out, args.dtype)
    print(f"exported {model!r} -> {out}")
    return 0


# --------------------------------------------------------------------------------------------------- quickstart


def cmd_quickstart(argv: list[str]) -> int:
    from diffimage.quickstart import DEFAULT_STEPS, run_quickstart

    p = _parser("quickstart", "Train the tiny U-Net on the CPU for a few minutes on coloured shapes this package "
                "draws (or on your images with --data), then sample a DDIM grid and measure bits/dim on held-out "
                "images.")
    p.add_argument("--out", "-o", default="quickstart_image", metavar="DIR",
                   help="output folder (default: quickstart_image/)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"training steps (default: {DEFAULT_STEPS})")
    p.add_argument("--data", metavar="PATH", help="an .npz (images, labels) or an image folder instead of shapes")
    p.add_argument("--image-size", type=int, default=None,
                   help="image size for --data folders (default: 32); .npz images keep their size")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--fresh", action="store_true", help="start a new run even if the output folder holds one")
    p.add_argument("--no-pretrained", action="store_true",
                   help="skip the first step: 64 digits drawn by the shipped mnist-small model")
    args = p.parse_args(argv)
    if args.steps < 1:
        raise UsageError("--steps must be at least 1")
    run_quickstart(args.out, steps=args.steps, data=args.data, image_size=args.image_size, device=args.device,
                   fresh=args.fresh, pretrained=not args.no_pretrained)
    return 0


# --------------------------------------------------------------------------------------------------- dispatch

COMMANDS: dict[str, tuple[Callable[[list[str]], int | None], str]] = {
    "train": (cmd_train, "train from a recipe (resumable; torchrun-ready)"),
    "sample": (cmd_sample, "images from a model: a grid and/or PNG files"),
    "evaluate": (cmd_evaluate, "bits/dim on held-out images, FID/KID against a reference set"),
    "export": (cmd_export, "EMA weights -> config.json + model.safetensors"),
    "quickstart": (cmd_quickstart, "train the tiny U-Net on the CPU, sample a grid, report bits/dim"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point (``diffimage = "diffimage.cli:main"``); returns the exit status."""
    return run_subcommands("diffimage", COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
