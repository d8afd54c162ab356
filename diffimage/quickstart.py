"""``diffimage quickstart``: the whole image job on a CPU in a few minutes, on a fresh machine without any data.

0. A model that draws: 64 digits from the shipped ``mnist-uncond`` model (:mod:`diffimage.pretrained`; its card's
   sampler, DPM-Solver++ 20 steps), in seconds, as ``pretrained_grid.png`` — what a trained model looks like before
   the tiny one trains.
1. Data: 2048 images of 16×16 coloured shapes (disc, square, triangle, ring on a dark background) drawn by
   :func:`diffimage.data.synthetic_images`, 8 of them held out; or, with ``--data``, an ``.npz`` (``images``,
   optional ``labels``; e.g. ``../shared/data/mnist/train.npz``) or an image folder (resized to ``--image-size``),
   8 images held out.
2. Training: the ``tiny`` U-Net preset (sized to the data) with T = 1000 linear β (Ho et al. 2020) through the
   training engine, ``--steps`` steps (default :data:`DEFAULT_STEPS`). Running it again continues the same run
   (``--fresh`` starts over; a larger ``--steps`` trains further).
3. Results: a grid of 64 images sampled with DDIM (50 steps) from the EMA weights (``grid.png``), the
   discretised-ELBO bits/dim of the held-out images (1000 network evaluations; 8 bits/dim is a uniform guess over
   the 256 levels), and ``metrics.json``.

The recipe is :data:`QUICKSTART_RECIPE`; ``recipes/image_quickstart.yaml`` holds the same values for
``diffimage train``.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from diffcore.atomic import write_json
from diffcore.checkpoint import find_latest
from diffcore.config import ConfigError
from diffcore.train import Trainer, read_log
from diffimage.data import dataset_images
from diffimage.recipe import ImageRecipe

__all__ = ["QUICKSTART_RECIPE", "DEFAULT_STEPS", "PRETRAINED_MODEL", "quickstart_recipe", "sample_pretrained",
           "run_quickstart"]

#: The shipped model the quickstart draws with first.
PRETRAINED_MODEL = "mnist-uncond"

#: Training steps of the quickstart (about 3 minutes on two free CPU cores at 16×16, 0.13 s per step).
DEFAULT_STEPS = 1200
HELDOUT_IMAGES = 8
GRID_IMAGES = 64
#: Image size of ``--data`` folders unless ``--image-size`` says otherwise.
FOLDER_SIZE = 32

#: The quickstart's recipe. A larger learning rate than the paper's 2e-4 and a short EMA suit a thousand steps.
#: ``scale_shift_norm``: the tiny network's first level has 32 channels, one per GroupNorm(32) group, and a
#: per-channel offset added before such a norm is removed by it, so DDPM's additive time embedding would not reach
#: that level; adaptive group norm applies the embedding after the norm.
QUICKSTART_RECIPE: dict[str, Any] = {
    "model": {"preset": "tiny", "scale_shift_norm": True},
    "data": {"source": "auto", "path": None, "holdout": HELDOUT_IMAGES, "num_synthetic": 2048},
    "train": {
        "max_steps": DEFAULT_STEPS,
        "batch_size": 32,
        "lr": 1e-3,
        "warmup_steps": 50,
        "grad_clip": 1.0,
        "precision": "fp32",
        "ema_decay": 0.999,
        "num_workers": 0,
        "log_every": 25,
        "ckpt_every": 400,
        "keep_last": 2,
        "device": "auto",
        "seed": 0,
    },
    "sample": {"sampler": "ddim", "steps": 50, "num_images": GRID_IMAGES, "nll_images": HELDOUT_IMAGES},
}


def _data_shape(data: Path, image_size: int | None) -> tuple[int, int]:
    """``(size, channels)`` the model needs for ``--data``: an ``.npz``'s own (square) size, or ``image_size``."""
    if data.is_file():
        with np.load(data, allow_pickle=False) as d:
            if "images" not in d:
                raise ConfigError(f"{data}: no 'images' array (keys: {', '.join(d.files)})")
            shape = d["images"].shape
        if len(shape) not in (3, 4) or shape[1] != shape[2]:
            raise ConfigError(f"{data}: the quickstart needs square images [N, H, H(, C)], got {list(shape)}")
        return int(shape[1]), 1 if len(shape) == 3 else int(shape[3])
    if data.is_dir():
        return image_size or FOLDER_SIZE, 3
    raise FileNotFoundError(f"--data {str(data)!r} does not exist (give an .npz or a folder of images)")


def quickstart_recipe(data: str | Path | None = None, image_size: int | None = None, **train: Any) -> ImageRecipe:
    """:data:`QUICKSTART_RECIPE` for synthetic shapes or ``data``, with some ``train`` fields changed.

    For ``data`` the tiny U-Net takes the data's size and channels, with attention at half the size.
    """
    model = dict(QUICKSTART_RECIPE["model"])
    data_section = dict(QUICKSTART_RECIPE["data"])
    if data is not None:
        path = Path(data).expanduser().resolve()
        size, channels = _data_shape(path, image_size)
        if size < 8 or size % 2:
            raise ConfigError(f"the tiny U-Net needs an even image size of at least 8, got {size}")
        model.update(image_size=size, in_channels=channels, attention_resolutions=[size // 2])
        data_section.update(path=str(path))
    return ImageRecipe.from_dict({**QUICKSTART_RECIPE, "model": model, "data": data_section,
                                  "train": {**QUICKSTART_RECIPE["train"], **train}})


def _loss_trend(run_dir: Path) -> tuple[float, float] | None:
    """Mean of the first and of the last three logged training losses."""
    rows = [r for r in read_log(run_dir) if isinstance(r.get("loss"), float)]
    if len(rows) < 2:
        return None
    k = min(3, len(rows) // 2)
    return sum(r["loss"] for r in rows[:k]) / k, sum(r["loss"] for r in rows[-k:]) / k


def sample_pretrained(out: Path, device: str = "auto", name: str = PRETRAINED_MODEL,
                      log: Callable[[str], Any] = print) -> dict[str, Any] | None:
    """64 samples (seed 0) of the shipped model ``name`` as ``out/pretrained_grid.png``, drawn with the sampler and
    steps its card recommends (its ``sample`` defaults); ``None`` (and a line saying so) when the package ships no
    such model."""
    from diffimage.api import available_models, load
    from diffimage.grid import save_grid
    from diffimage.sample import resolved_options

    if name not in available_models():
        log(f"(no shipped model named {name!r}: skipping the pretrained grid)")
        return None
    t0 = time.monotonic()
    model = load(name, device)
    c = model.config
    kind = "EDM" if c.diffusion.edm is not None else f"{c.diffusion.num_steps}-step DDPM"
    fid = model.info.get("provenance", {}).get("fid")
    log(f"drawing {GRID_IMAGES} digits with the shipped model {name!r} ({kind} U-Net, "
        f"{sum(p.numel() for p in model.model.parameters()) / 1e6:.2f}M parameters"
        + (f"; {fid}" if isinstance(fid, str) else "") + ") ...")
    used = resolved_options(model.sample_defaults, model.config)
    sampler, steps = used["sampler"], used["steps"]
    g = torch.Generator(device=model.device).manual_seed(0)
    images = model.sample(GRID_IMAGES, sampler=sampler, steps=steps, generator=g)
    grid = save_grid(images, out / "pretrained_grid.png", nrow=int(math.sqrt(GRID_IMAGES)))
    seconds = time.monotonic() - t0
    threads = torch.get_num_threads()
    log(f"  {grid} in {seconds:.1f} s ({sampler}, {steps} steps, on {model.device}, {threads} "
        f"thread{'s' if threads != 1 else ''})")
    return {"model": name, "grid": grid, "seconds": seconds}


def run_quickstart(
    out: str | Path = "quickstart_image",
    *,
    steps: int = DEFAULT_STEPS,
    data: str | Path | None = None,
    image_size: int | None = None,
    device: str = "auto",
    fresh: bool = False,
    pretrained: bool = True,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run the quickstart (module docstring) into ``out``; returns paths, the loss trend and the bits/dim.

    ``pretrained``: first draw the shipped model's grid (:func:`sample_pretrained`)."""
    
    from diffimage.api import load
    from diffimage.grid import save_grid
    from diffimage.task import ImageTask

    t_start = time.monotonic()
    out = Path(out)
    run_dir = out / "run"
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    shipped = sample_pretrained(out, device, log=log) if pretrained else None
    recipe = quickstart_recipe(data, image_size, max_steps=steps, device=device)
    task = ImageTask(recipe)
    n_train = len(task.train_dataset())  # type: ignore[arg-type]
    m = recipe.model
    what = "coloured shapes drawn by the package" if data is None else str(data)
    if find_latest(run_dir) is not None:
        log(f"continuing the run in {run_dir} (--fresh starts over)")
    params = sum(p.numel() for p in task.build_model().parameters())
    log(f"training the tiny U-Net ({params / 1e6:.2f}M parameters, {m.in_channels}x{m.image_size}x{m.image_size}, "
        f"T={m.diffusion.num_steps}) on {n_train} images ({what}) for {steps} steps; {HELDOUT_IMAGES} held out")
    summary = Trainer(task, recipe.train, run_dir).fit()
    trend = _loss_trend(run_dir)

    model = load(run_dir, device)
    log(f"sampling {GRID_IMAGES} images with DDIM ({recipe.sample.steps} steps) from the EMA weights ...")
    g = torch.Generator(device=model.device).manual_seed(0)
    images = model.sample(GRID_IMAGES, sampler="ddim", steps=recipe.sample.steps, generator=g)
    grid = save_grid(images, out / "grid.png", nrow=int(math.sqrt(GRID_IMAGES)))
    held, labels = dataset_images(task.heldout)  # type: ignore[arg-type]
    save_grid(held, out / "heldout.png")
    log(f"bits/dim of the {held.shape[0]} held-out images ({m.diffusion.num_steps} network evaluations) ...")
    g = torch.Generator(device=model.device).manual_seed(0)
    bpd = model.bits_per_dim(held, labels if m.num_classes is not None else None, generator=g)
    elapsed = time.monotonic() - t_start
    metrics = {"steps": summary["step"], "device": summary["device"], "bits_per_dim": float(bpd.mean()),
               "bits_per_dim_per_image": [float(v) for v in bpd], "loss_first": trend[0] if trend else None,
               "loss_last": trend[1] if trend else None, "elapsed_s": elapsed}
    write_json(out / "metrics.json", metrics)

    lines = ["", "=" * 78, f"image quickstart done in {elapsed / 60:.1f} min ({summary['step']} training steps on "
             f"{summary['device']})"]
    if trend is not None:
        lines.append(f"training loss (MSE on the noise): {trend[0]:.3f} at the start -> {trend[1]:.3f} now")
    lines += [f"held-out bits/dim: {float(bpd.mean()):.3f} (discretised ELBO; a uniform guess is 8.000)",
              "",
              *([f"shipped model: {shipped['grid']}  ({shipped['model']}: 64 digits in {shipped['seconds']:.1f} s)"]
                if shipped else []),
              f"samples:      {grid}  (64 DDIM samples; the held-out images are in {out / 'heldout.png'})",
              f"metrics:      {out / 'metrics.json'}",
              f"run folder:   {run_dir}  (config.yaml, log.jsonl, tb/, checkpoints/)",
              "",
              f"more samples:  diffimage sample --model {run_dir} --n 64 --sampler ddpm --out samples/",
              f"train longer:  diffimage quickstart --out {out} --steps {2 * steps}   (continues this run)",
              "=" * 78]
    log("\n".join(lines))
    sys.stdout.flush()
    return {"summary": summary, "pretrained": shipped, "loss_trend": trend, "bits_per_dim": bpd, "grid": grid, "run_dir": run_dir,
            "metrics": metrics}
