"""Train (or continue) the Griffin-Lim refiner on a CPU-time budget, through the one engine, with a held-out record.

    .venv/bin/python tools/train_refiner.py --data ../shared/data/ljspeech/wavs --run-dir runs/refiner \\
        --cpu-minutes 60 --eval-every 10 --threads 1 [key=value ...]

The recipe is ``recipes/ljspeech_refiner.yaml`` (``--recipe`` for another; a run folder being resumed without
``--recipe`` uses its own ``config.yaml``), with ``key=value`` overrides as ``diffwave train`` takes them
(``init_from=ljspeech-refiner`` continues from the shipped weights, ``model.gl_iters=32`` changes the Griffin-Lim
start of a resumed run). The held-out clips are the recipe's (``data.holdout: 3``: those of ``ljspeech-tiny``),
scored for the record only; the validation clips that pick the best EMA are ``--val`` training clips (evenly spaced,
the recipe's ``validation``), not trained on. Running the command again resumes the run folder for ``--cpu-minutes``
more CPU minutes. The loop is :func:`diffwave.refiner_train.train_refiner`; ``tools/ship_refiner.py`` ships a run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "recipes" / "ljspeech_refiner.yaml"


def load(data: str | None, run_dir: str | Path | None = None, recipe: str | None = None,
         overrides: Sequence[str] = (), n_val: int | None = None, device: str | None = None):
    """The refiner recipe of a command line: ``recipe`` (default: the run folder's ``config.yaml`` when there is
    one, else :data:`RECIPE`), ``data`` as ``data.path``, ``--val`` and ``--device``, then the overrides."""
    from diffwave.recipe import load_diffwave_recipe
    from diffwave.refiner_task import RefinerRecipe

    stored = Path(run_dir) / "config.yaml" if run_dir is not None else None
    path = recipe if recipe is not None else stored if stored is not None and stored.is_file() else RECIPE
    first = [f"validation={n_val}"] * (n_val is not None) + [f"train.device={device}"] * (device is not None)
    out = load_diffwave_recipe(path, [*first, *overrides], data=data)
    if not isinstance(out, RefinerRecipe):
        raise SystemExit(f"{path}: not a refiner recipe (it needs 'network: refiner')")
    return out


def split(data: str, n_val: int) -> tuple[list[Path], list[Path], list[Path]]:
    """(train, validation, held-out) clips of ``data`` as this command splits them with the default recipe."""
    from diffwave.refiner_task import RefinerTask

    task = RefinerTask(load(data, recipe=str(RECIPE), n_val=n_val))
    return task.train_files, task.validation_files, task.heldout_files


def main(argv: list[str] | None = None) -> int:
    from diffcore.cli import parse_args, recipe_parser

    p = recipe_parser("train_refiner.py", __doc__, run_dir=True)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--data", help="the clips (sets data.path; a resumed run keeps its own without it)")
    p.add_argument("--cpu-minutes", type=float, default=10.0, help="CPU minutes of training to add to the run")
    p.add_argument("--eval-every", type=float, default=5.0, help="CPU minutes (of the run) between evaluations")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--val", type=int, default=None,
                   help="training clips kept out as the validation set (default: 2 for a new run, else the run's)")
    p.add_argument("--device", default=None, help="train.device (default cpu: the budget counts CPU work)")
    a = parse_args(p, argv)

    import torch

    from diffcore.cli import setup_logging
    from diffwave.refiner_train import train_refiner

    setup_logging()
    torch.set_num_threads(a.threads)
    fresh = not (Path(a.run_dir) / "config.yaml").is_file()
    n_val = a.val if a.val is not None else 2 if fresh else None
    device = a.device if a.device is not None else "cpu" if fresh else None
    recipe = load(a.data, a.run_dir, a.recipe, a.overrides, n_val, device)
    train_refiner(a.run_dir, recipe, cpu_minutes=a.cpu_minutes, eval_every_minutes=a.eval_every,
                  log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    from diffcore.cli import run_cli

    raise SystemExit(run_cli(main))
