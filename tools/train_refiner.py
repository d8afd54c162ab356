"""Train (or continue) the Griffin-Lim refiner on LJSpeech clips, with the shipped vocoders' held-out split.

    .venv/bin/python tools/train_refiner.py --data ../shared/data/ljspeech/wavs --run-dir runs/refiner \\
        --cpu-minutes 60 --threads 2 [--warm-start diffwave/pretrained/ljspeech-refiner]

The held-out clips are those of ``ljspeech-tiny``'s recipe (``data.holdout: 3``), scored for the record only; the
validation clips that pick the best EMA are ``--val`` clips taken from the training part (evenly spaced) and are not
trained on. Running the command again resumes the run folder (a budget of ``--cpu-minutes`` more CPU minutes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def split(data: str, n_val: int) -> tuple[list[Path], list[Path], list[Path]]:
    """(train, validation, held-out) clips of ``data``: held-out as ljspeech-tiny's recipe keeps them."""
    import json

    from diffwave.data import split_files
    from diffwave.recipe import DataConfig

    info = json.loads((ROOT / "diffwave/pretrained/ljspeech-tiny/config.json").read_text())["data"]
    info["path"] = data
    train, heldout = split_files(DataConfig.from_dict(info))
    step = max(1, len(train) // max(1, n_val))
    val = [train[i] for i in range(step // 2, len(train), step)][:n_val] if n_val else []
    return [f for f in train if f not in val], val, heldout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--cpu-minutes", type=float, default=10.0)
    p.add_argument("--eval-every", type=float, default=5.0, help="CPU minutes between evaluations")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--val", type=int, default=2, help="training clips kept out as the validation set")
    p.add_argument("--warm-start", default=None)
    p.add_argument("--set", nargs="*", default=[], help="model.X=V or train.X=V overrides (new runs; on resume only "
                   "model.gl_iters and model.gl_momentum, the Griffin-Lim start, may change)")
    a = p.parse_args(argv)

    import torch
    import yaml

    from diffwave.refiner import RefinerConfig
    from diffwave.refiner_train import RefinerTrainConfig, train_refiner

    torch.set_num_threads(a.threads)
    over: dict[str, dict] = {"model": {}, "train": {}}
    for item in a.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        over[section][name] = yaml.safe_load(value)
    train, val, heldout = split(a.data, a.val)
    print(f"train {len(train)} clips, validation {[f.name for f in val]}, held-out {[f.name for f in heldout]}",
          flush=True)
    resumed = (Path(a.run_dir) / "state.pt").is_file()
    model_config = None
    if resumed and over["model"]:
        state = torch.load(Path(a.run_dir) / "state.pt", map_location="cpu", weights_only=True)
        model_config = RefinerConfig.from_dict({**state["model_config"], **over["model"]})
    elif not resumed:
        model_config = RefinerConfig.from_dict(over["model"])
    train_refiner(a.run_dir, train, model_config=model_config,
                  train_config=RefinerTrainConfig.from_dict(over["train"]), cpu_minutes=a.cpu_minutes,
                  eval_every_minutes=a.eval_every, val_files=val, heldout_files=heldout, warm_start=a.warm_start,
                  log=lambda s: print(s, flush=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
