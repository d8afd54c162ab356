"""The ``diffwave`` command: ``diffwave <command> [options]`` (``python -m diffwave`` does the same).

    preprocess   compute and cache the mels of a recipe's data (process pool, progress bar)
    train        train from a recipe through diffcore's engine (resumable; run it under torchrun to scale out)
    vocode       wav or mel (.npy/.pt) files or folders -> wav, batched, long inputs in seamless chunks
    generate     clips from an unconditional model
    evaluate     resynthesis metrics beside Griffin-Lim (vocoders) or digit metrics (unconditional models)
    export       a run's EMA weights -> config.json + model.safetensors
    import-lmnt  an lmnt-com/diffwave checkpoint -> an export folder of this package
    quickstart   synthetic speech -> a small vocoder trained on the CPU -> vocoded clips, plot and metrics

Each command prints one line ``error: ...`` and exits with status 2 for a mistake the user can fix (a bad recipe,
a missing file, a mel that does not fit the model), writes every output file atomically, and shows progress bars
on long work. ``--debug`` (or ``DIFFSTACK_DEBUG=1``) shows full tracebacks.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from diffcore.cli import (UsageError, check_input_path, check_number, check_output_dir, check_output_file,
                          parse_args, recipe_parser, run_subcommands, train_command)

__all__ = ["main", "COMMANDS"]

log = logging.getLogger("diffwave")


def _user_errors(fn: Callable[[list[str]], int | None]) -> Callable[[list[str]], int | None]:
    """Turn this package's own user-facing errors (bad audio, a mel that does not fit, an lmnt file we cannot read,
    clashing vocoder inputs/outputs) into :class:`UsageError`, which ``run_cli`` reports as one line."""

    @functools.wraps(fn)
    def wrapper(argv: list[str]) -> int | None:
        from diffwave.audio import AudioError
        from diffwave.lmnt import LmntImportError
        from diffwave.mel import MelError
        from diffwave.jobs import VocodeError

        try:
            return fn(argv)
        except (AudioError, MelError, LmntImportError, VocodeError) as e:
            raise UsageError(str(e)) from e

    return wrapper


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"diffwave {command}", description=description, allow_abbrev=False)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return p


class _DeprecatedNoFast(argparse.Action):
    """``--no-fast``, the old spelling of ``--eager`` (hidden; says so once on stderr)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=False, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print("diffwave: --no-fast is deprecated, use --eager (same effect)", file=sys.stderr)
        setattr(namespace, self.dest, True)


def _add_model_args(p: argparse.ArgumentParser, steps: bool = True) -> None:
    p.add_argument("--model", "-m", required=True, metavar="PATH",
                   help="run folder, checkpoint (.pt), export folder or lmnt checkpoint")
    p.add_argument("--device", default="auto", help="auto (GPU if there is one), cpu or cuda[:N] (default: auto)")
    if steps:
        p.add_argument("--steps", choices=("fast", "full"), default="fast",
                       help="fast: the model's short inference_betas schedule; full: all T training steps (default: fast)")
        p.add_argument("--eager", action="store_true",
                       help="eager float32 network calls, as the reference implementation makes them (default: bf16 "
                            "autocast where the hardware has it, channels-last, the conditioner cache on the CPU)")
        p.add_argument("--no-fast", dest="eager", action=_DeprecatedNoFast, help=argparse.SUPPRESS)
        p.add_argument("--compile", action="store_true",
                       help="also torch.compile the network (about a minute per input shape; pays off on long jobs)")


#: Upper bounds of the numeric options (far above any sensible use; they stop typos like --n 10000000000).
MAX_BATCH = 4096
MAX_COUNT = 100_000
MAX_SEED = 2**63 - 1


def _check_device(args: argparse.Namespace) -> None:
    """``--device`` is checked before a model is loaded: an unknown name lists the valid ones."""
    from diffcore.device import resolve_device

    resolve_device(args.device)


def _inference_option(args: argparse.Namespace):
    """The ``inference=`` argument of the sampling functions from ``--eager`` / ``--compile``."""
    if args.eager:
        if args.compile:
            raise UsageError("--compile and --eager exclude each other")
        return "eager"
    if args.compile:
        from diffcore.inference import InferenceConfig

        return InferenceConfig(compile="on")
    return None


# --------------------------------------------------------------------------------------------------- preprocess


@_user_errors
def cmd_preprocess(argv: list[str]) -> int:
    from diffwave.data import resolve_files
    from diffwave.preprocess import preprocess
    from diffwave.recipe import load_diffwave_recipe

    p = recipe_parser("diffwave preprocess", "Compute and cache the mel spectrograms of a recipe's data "
                      "(its data.path with its model.mel front end) so training reads them from disk.")
    p.add_argument("--data", metavar="DIR", help="shortcut for data.path=DIR")
    p.add_argument("--out", metavar="DIR", help="the cache folder (default: the recipe's data.cache_dir)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs; 0: this process)")
    args = parse_args(p, argv)
    check_number("--workers", args.workers, 0, 512)
    recipe = load_diffwave_recipe(args.recipe, args.overrides, data=args.data)
    if recipe.model.mel is None:
        raise UsageError("this recipe's model is unconditional (no mel front end): there is nothing to preprocess")
    out = args.out or recipe.data.cache_dir
    if out is None:
        raise UsageError("say where to cache the mels: --out DIR or data.cache_dir=DIR (then train with the same "
                         "data.cache_dir)")
    check_output_dir(out, "--out" if args.out else "data.cache_dir")
    files = resolve_files(recipe.data)
    summary = preprocess(files, out, recipe.model.mel, num_workers=args.workers)
    print(f"{summary['computed']} mel(s) computed, {summary['cached']} already cached, {summary['failed']} failed "
          f"-> {summary['out_dir']}")
    if summary["computed"] + summary["cached"] == 0:  # nothing to train on: no advice to train on it
        first = summary["failures"][0][1] if summary["failures"] else "no files"
        print(f"error: no mel could be computed: all {summary['total']} file(s) failed (first: {first}); the cache "
              f"{summary['out_dir']} holds nothing to train on", file=sys.stderr)
        return 1
    if args.out and args.out != recipe.data.cache_dir:
        print(f"train with data.cache_dir={args.out} to use them")
    return 0


# --------------------------------------------------------------------------------------------------- train


@_user_errors
def cmd_train(argv: list[str]) -> int:
    from diffwave.recipe import load_diffwave_recipe
    from diffwave.task import make_task

    return train_command(
        argv, prog="diffwave train", data_help="shortcut for data.path=DIR", load_recipe=load_diffwave_recipe,
        make_task=make_task,  # resolves the clips: a missing data folder is reported before the run starts
        description="Train DiffWave from a recipe. A run folder that already holds a checkpoint is resumed (its "
                    "config.yaml is the recipe when --recipe is left out). Scale out with torchrun "
                    "--nproc_per_node=N -m diffwave train ...")


# --------------------------------------------------------------------------------------------------- vocode


@_user_errors
def cmd_vocode(argv: list[str]) -> int:
    from diffwave.api import load
    from diffwave.audio import OUTPUT_FORMATS
    from diffwave.jobs import collect_inputs, vocode_files
    from diffwave.sample import DEFAULT_MAX_FRAMES

    p = _parser("vocode", "Turn mel spectrograms (.npy/.pt, in the model's mel preset) or recordings (their mel is "
                "computed with the model's preset) into waveforms.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, mel files or folders of them")
    _add_model_args(p)
    p.add_argument("--out", "-o", default="vocoded", metavar="PATH",
                   help="output folder (default: vocoded/), or a .wav/.flac path for a single input (an existing "
                        "file there is replaced only if it is a .wav/.flac)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="windows of one long input per network call (default: 16); the audio does not change")
    p.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES,
                   help=f"longest mel vocoded in one piece; longer ones go in exact overlapping chunks "
                        f"(default: {DEFAULT_MAX_FRAMES})")
    p.add_argument("--seed", type=int, default=0,
                   help="noise seed (default: 0): each file's noise comes from this seed and that file's mel alone, "
                        "so its audio is the same in any run, beside any other files, in any order")
    p.add_argument("--strict", action="store_true", help="refuse audio at another sample rate instead of resampling")
    args = p.parse_args(argv)
    check_number("--batch-size", args.batch_size, 1, MAX_BATCH)
    check_number("--max-frames", args.max_frames, 1, 1_000_000)
    check_number("--seed", args.seed, 0, MAX_SEED)
    _check_device(args)
    for path in args.inputs:  # a FIFO or a device is named as such (not "no such file or folder")
        check_input_path(path, "input")
    inputs = collect_inputs(args.inputs)
    single = None
    if Path(args.out).suffix.lower() in OUTPUT_FORMATS:
        if len(inputs) != 1:
            raise UsageError(f"--out {args.out} names one file, but there are {len(inputs)} inputs: give a folder")
        single = args.out
    # Checked before the model is loaded and anything is sampled: a folder that cannot be written, a path under a
    # file, too little free space (16-bit output: about 2 bytes per sample at the model's rate, estimated from the
    # input sizes).
    need = sum(_output_bytes_estimate(item.path, item.is_mel) for item in inputs)
    if single is not None:
        check_output_file(single, sorted(OUTPUT_FORMATS), need_bytes=need)
    else:
        check_output_dir(args.out, need_bytes=need)
    voc = load(args.model, args.device)
    if not voc.conditional:
        raise UsageError(f"{args.model} is an unconditional model: use `diffwave generate`")
    from diffwave.sample import context_frames

    if args.max_frames <= 2 * context_frames(voc.model.config):
        raise UsageError(f"--max-frames must be above {2 * context_frames(voc.model.config)} for this model (twice "
                         "the context frames each chunk carries on both sides)")
    written, failed = vocode_files(voc.model, inputs, args.out, args.steps, seed=args.seed,
                                   batch_size=args.batch_size, max_frames=args.max_frames, strict=args.strict,
                                   single_output=single, inference=_inference_option(args))
    where = single or args.out
    print(f"vocoded {len(written)} file(s) with {args.steps} sampling at {voc.sample_rate} Hz -> {where}")
    if failed:
        print(f"error: {len(failed)} of {len(inputs)} input(s) failed:", file=sys.stderr)
        for path, reason in failed:
            print(f"  {reason}", file=sys.stderr)
        return 1
    return 0


def _output_bytes_estimate(path: Path, is_mel: bool) -> int:
    """Rough size of the 16-bit output of one input: a mel file holds 4 bytes per band and frame (80 bands, 256
    samples of 2 bytes per frame: about 1.6 times its size); a recording about its own size."""
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    return int(size * 1.6) if is_mel else size


# --------------------------------------------------------------------------------------------------- generate


@_user_errors
def cmd_generate(argv: list[str]) -> int:
    from diffwave.api import load
    from diffwave.jobs import generate_files

    p = _parser("generate", "Generate clips with an unconditional model.")
    _add_model_args(p)
    p.add_argument("--n", type=int, default=8, help="number of clips (default: 8)")
    p.add_argument("--out", "-o", default="generated", metavar="DIR", help="output folder (default: generated/)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed: clips i..i+batch-1 come from seed + i, so with --batch-size 1 clip i is seed + i")
    p.add_argument("--batch-size", type=int, default=8, help="clips per sampling run (default: 8)")
    p.add_argument("--seconds", type=float, default=None, help="clip length (default: the model's audio_length)")
    args = p.parse_args(argv)
    check_number("--n", args.n, 1, MAX_COUNT)
    check_number("--batch-size", args.batch_size, 1, MAX_BATCH)
    check_number("--seed", args.seed, 0, MAX_SEED)
    check_number("--seconds", args.seconds, 0, 3600, lo_open=True)
    _check_device(args)
    check_output_dir(args.out)
    voc = load(args.model, args.device)
    if voc.conditional:
        raise UsageError(f"{args.model} is a mel-conditioned vocoder: use `diffwave vocode`")
    length = int(round(args.seconds * voc.sample_rate)) if args.seconds else None
    generate_files(voc.model, args.n, args.out, args.steps, seed=args.seed, batch_size=args.batch_size,
                   length=length, source=voc.source, inference=_inference_option(args))
    print(f"generated {args.n} clip(s) at {voc.sample_rate} Hz -> {Path(args.out)}")
    return 0


# --------------------------------------------------------------------------------------------------- evaluate


@_user_errors
def cmd_evaluate(argv: list[str]) -> int:
    from diffwave.api import load
    from diffwave.data import resolve_files
    from diffwave.evaluate import evaluate_generation, evaluate_resynthesis_files, heldout_files
    from diffwave.recipe import DataConfig

    p = _parser("evaluate", "Vocoders: resynthesise held-out recordings and compare with Griffin-Lim on the same "
                "mels (log-mel L1, MR-STFT, PESQ, STOI, DNSMOS), writing wavs, a table and a spectrogram plot. "
                "Unconditional models: generate clips and compute FID/IS/mIS/AM/NDB with a digit classifier.")
    _add_model_args(p)
    p.add_argument("--data", metavar="PATH", help="recordings (folder or file list); for a vocoder the default is "
                   "the held-out clips of the model's recipe; for an unconditional model, the reference digits")
    p.add_argument("--n", type=int, default=None,
                   help="vocoder: evaluate the first N recordings (default 8); unconditional: clips (default 64)")
    p.add_argument("--out", "-o", default="evaluation", metavar="DIR", help="output folder (default: evaluation/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=None, help="keep only the start of long recordings")
    p.add_argument("--gl-iters", type=int, default=64, help="Griffin-Lim iterations (default: 64)")
    p.add_argument("--no-dnsmos", action="store_true", help="skip DNSMOS (the slowest metric)")
    p.add_argument("--classifier", metavar="CKPT", help="digit classifier checkpoint (default: train one on --data)")
    p.add_argument("--classifier-epochs", type=int, default=30, help="epochs when training the classifier (default: 30)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per sampling run (unconditional)")
    args = p.parse_args(argv)
    check_number("--n", args.n, 1, MAX_COUNT)
    check_number("--seed", args.seed, 0, MAX_SEED)
    check_number("--max-seconds", args.max_seconds, 0, 3600, lo_open=True)
    check_number("--gl-iters", args.gl_iters, 1, 10_000)
    check_number("--classifier-epochs", args.classifier_epochs, 1, 10_000)
    check_number("--batch-size", args.batch_size, 1, MAX_BATCH)
    _check_device(args)
    check_output_dir(args.out)
    voc = load(args.model, args.device)
    if args.data is not None:
        files = resolve_files(DataConfig(path=args.data))
    else:
        files = heldout_files(voc.info)
        if not files:
            raise UsageError("give --data PATH: the model's recipe holds no reachable held-out clips (data.holdout)")
    if voc.conditional:
        files = files[: args.n if args.n is not None else 8]
        result = evaluate_resynthesis_files(voc, files, args.out, args.steps, seed=args.seed,
                                            inference=_inference_option(args), max_seconds=args.max_seconds, with_dnsmos=not args.no_dnsmos,
                                            gl_iters=args.gl_iters)
        print(result["table"].markdown())
    else:
        result = evaluate_generation(voc, files, args.out, args.n if args.n is not None else 64, args.steps,
                                     seed=args.seed,
                                     inference=_inference_option(args),
                                     batch_size=args.batch_size, classifier=args.classifier,
                                     classifier_epochs=args.classifier_epochs)
        print(result["paths"]["markdown"].read_text())
    print(f"results in {args.out}/ ({', '.join(p.name for p in result['paths'].values() if isinstance(p, Path))})")
    return 0


# --------------------------------------------------------------------------------------------------- export / import


@_user_errors
def cmd_export(argv: list[str]) -> int:
    from diffwave.api import export_run

    p = _parser("export", "Export a run's EMA weights as config.json + model.safetensors.")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT", help="a run folder (its latest checkpoint) or a .pt file")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="the export folder")
    args = p.parse_args(argv)
    voc, out = export_run(args.source, args.out)
    print(f"exported {voc!r} -> {out}")
    return 0


@_user_errors
def cmd_import_lmnt(argv: list[str]) -> int:
    from diffwave.api import import_lmnt

    p = _parser("import-lmnt", "Convert an lmnt-com/diffwave checkpoint (weights.pt, or its folder) into an export "
                "folder of this package; the imported model gives lmnt's outputs.")
    p.add_argument("source", metavar="LMNT_CHECKPOINT")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="the export folder")
    args = p.parse_args(argv)
    voc, step = import_lmnt(args.source, args.out)
    print(f"imported lmnt checkpoint {args.source} (step {step}) -> {args.out}: {voc!r}")
    return 0


# --------------------------------------------------------------------------------------------------- quickstart


@_user_errors
def cmd_quickstart(argv: list[str]) -> int:
    from diffwave.quickstart import DEFAULT_MINUTES, run_quickstart

    p = _parser("quickstart", "Vocode a few seconds of real speech with the vocoder that ships with the package, "
                "then train a small vocoder on the CPU for a few minutes on speech-like audio this package "
                "synthesises (or on your recordings with --data), vocode held-out clips, and compare both with "
                "Griffin-Lim.")
    p.add_argument("--out", "-o", default="quickstart_out", metavar="DIR", help="output folder (default: quickstart_out/)")
    p.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                   help=f"training time budget in minutes (default: {DEFAULT_MINUTES:g})")
    p.add_argument("--steps", type=int, default=None, help="train exactly this many steps (no time budget)")
    p.add_argument("--data", metavar="DIR", help="train on these recordings instead of synthetic speech")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--fresh", action="store_true", help="start a new run even if the output folder holds one")
    p.add_argument("--no-dnsmos", action="store_true", help="skip DNSMOS")
    p.add_argument("--no-pretrained", action="store_true",
                   help="skip the first part (the shipped vocoder on the shipped speech clips)")
    args = p.parse_args(argv)
    check_number("--minutes", args.minutes, 0, 24 * 60, lo_open=True)
    check_number("--steps", args.steps, 1, 10_000_000)
    _check_device(args)
    run_quickstart(args.out, minutes=args.minutes, steps=args.steps, data=args.data, device=args.device,
                   fresh=args.fresh, with_dnsmos=not args.no_dnsmos, pretrained=not args.no_pretrained)
    return 0


# --------------------------------------------------------------------------------------------------- dispatch

COMMANDS: dict[str, tuple[Callable[[list[str]], int | None], str]] = {
    "preprocess": (cmd_preprocess, "compute and cache the mels of a recipe's data"),
    "train": (cmd_train, "train from a recipe (resumable; torchrun-ready)"),
    "vocode": (cmd_vocode, "mel or wav files/folders -> wav"),
    "generate": (cmd_generate, "clips from an unconditional model"),
    "evaluate": (cmd_evaluate, "metrics beside Griffin-Lim, or digit metrics"),
    "export": (cmd_export, "EMA weights -> config.json + model.safetensors"),
    "import-lmnt": (cmd_import_lmnt, "lmnt-com/diffwave checkpoint -> export folder"),
    "quickstart": (cmd_quickstart, "train a small vocoder on the CPU and compare it with Griffin-Lim"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point (``diffwave = "diffwave.cli:main"``); returns the exit status."""
    return run_subcommands("diffwave", COMMANDS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
