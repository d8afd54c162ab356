"""Command-line helpers shared by the console commands of the model packages.

A model package's ``train`` command is one call of :func:`train_command` (recipe or the run folder's
``config.yaml``, ``--data``, overrides, the task, the engine, a summary line); its other commands build on
:func:`recipe_parser`/:func:`parse_args`, the ``check_*`` helpers and :func:`run_subcommands`.

Overrides are ``key=value`` or ``--key=value`` with dotted keys for nesting (``train.lr=1e-4``,
``--model.residual_layers=30``); values are parsed as YAML and type-checked against the recipe's dataclasses.
:func:`run_cli` turns the errors a user can fix (bad recipe, bad checkpoint, bad argument) into one line
``error: ...`` on stderr and exit status 2 (1 for :class:`~diffcore.train.TrainingError`), without a traceback
unless ``--debug`` is given or ``DIFFSTACK_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from diffcore.errors import CheckpointError, ConfigError, TrainingError
from diffcore.train import Trainer, TrainTask

__all__ = ["UsageError", "recipe_parser", "parse_args", "train_command", "run_cli", "debug_enabled", "run_subcommands",
           "setup_logging", "check_number", "check_output_file", "check_output_dir", "check_input_path",
           "os_error_message"]


class UsageError(ValueError):
    """A command-line mistake the user can fix (reported as ``error: ...`` with exit status 2)."""


def recipe_parser(prog: str | None = None, description: str | None = None, *, run_dir: bool = False,
                  recipe_required: bool = False) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with ``--recipe FILE``, ``--debug``, optionally ``--run-dir DIR``, and positional
    ``key=value`` overrides. Add command-specific options to it, then call :func:`parse_args`."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        allow_abbrev=False,  # so that --lr=... is never taken for a prefix of a real option
        epilog="Overrides: key=value or --key=value, dotted for nesting (e.g. train.lr=1e-4). "
        "Set DIFFSTACK_DEBUG=1 or pass --debug for full tracebacks.",
    )
    p.add_argument("--recipe", metavar="FILE", required=recipe_required, help="YAML recipe file")
    if run_dir:
        p.add_argument("--run-dir", dest="run_dir", metavar="DIR", required=True,
                       help="run folder (resumed if it already holds a checkpoint)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    return p


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with ``parser``. Every ``key=value`` and every ``--key=value`` whose key is not an option
    of the parser is a recipe override; ``args.overrides`` lists them in command-line order (later ones win)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    actions = parser._option_string_actions
    overrides: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-") and a != "-":
            name = a.split("=", 1)[0]
            action = actions.get(name)
            if action is None:
                if a.startswith("--") and "=" in a:
                    overrides.append(a[2:])
                    i += 1
                    continue
                raise UsageError(f"unknown option {a!r}; recipe overrides are written --key=value or key=value")
            rest.append(a)
            if "=" not in a and action.nargs != 0 and i + 1 < len(argv):
                rest.append(argv[i + 1])  # the option's value, even if it contains '='
                i += 1
        elif "=" in a:
            overrides.append(a)
        else:
            rest.append(a)
        i += 1
    args = parser.parse_args(rest)
    stray = [a for a in (getattr(args, "overrides", None) or []) if "=" not in a]
    if stray:
        raise UsageError(f"argument {stray[0]!r} is not an override: write key=value (e.g. train.lr=1e-4)")
    args.overrides = overrides
    return args


def train_command(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    data_help: str,
    load_recipe: Callable[..., Any],
    make_task: Callable[[Any], TrainTask],
) -> int:
    """The ``train`` command of a model package: the recipe (``--recipe``, or the run folder's ``config.yaml`` when
    resuming without one) with ``--data`` and ``key=value`` overrides, its task, the one engine, a summary line.

    ``load_recipe(path, overrides, data=...)`` reads the recipe; ``make_task(recipe)`` builds the task and must
    surface data problems (a missing file, images of the wrong size) as ``FileNotFoundError``/``ConfigError``: when
    the offending path came from the run's stored ``config.yaml``, the error says so and how to change it. Only rank
    0 prints.
    """
    p = recipe_parser(prog, description, run_dir=True)
    p.add_argument("--data", metavar="PATH", help=data_help)
    args = parse_args(p, argv)
    stored = Path(args.run_dir) / "config.yaml"
    if args.recipe is None and not stored.is_file():
        raise UsageError(f"give --recipe FILE (the run folder {args.run_dir} has no config.yaml to resume from)")
    recipe = load_recipe(args.recipe if args.recipe is not None else stored, args.overrides, data=args.data)
    try:
        task = make_task(recipe)
    except (FileNotFoundError, ConfigError) as e:
        if args.recipe is None and args.data is None:  # the path came from the run's config.yaml: say so
            raise UsageError(f"{' '.join(str(e).split())} (this path comes from the run's {stored}; pass --recipe "
                             "or an override such as data.path=... to change it)") from e
        raise
    summary = Trainer(task, recipe.train, args.run_dir).fit()
    if os.environ.get("RANK", "0") == "0":
        print(f"trained to step {summary['step']} (loss {summary['loss']:.4g}) on {summary['device']} "
              f"x{summary['world_size']}, {summary['precision']}; checkpoint: {summary['checkpoint']}")
    return 0


def check_number(option: str, value: float | int | None, lo: float | None = None, hi: float | None = None, *,
                 lo_open: bool = False) -> None:
    """Refuse a numeric option that is not finite or lies outside ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``):
    NaN, ±inf, zero or negative counts and absurd sizes are :class:`UsageError` naming the option and the range.
    ``None`` (an option left at its default) passes."""
    import math

    if value is None:
        return
    lo_text = "-inf" if lo is None else f"{lo:g}"
    hi_text = "inf" if hi is None else f"{hi:g}"
    what = f"{'(' if lo_open else '['}{lo_text}, {hi_text}]"
    bad = not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)) or \
        (hi is not None and value > hi)
    if bad:
        raise UsageError(f"{option} must be a finite number in {what}, got {value!r}")


def os_error_message(e: OSError) -> str:
    """One line for an ``OSError``: the file it names and the system's reason (``disk full``, ``read-only``)."""
    where = e.filename if e.filename is not None else None
    reason = e.strerror or str(e) or type(e).__name__
    if where is None:
        return reason
    extra = f" -> {e.filename2}" if getattr(e, "filename2", None) else ""
    return f"{where}{extra}: {reason}"


def check_input_path(path: str | os.PathLike, option: str, *, folder_ok: bool = True) -> None:
    """Refuse an input path that is empty (an unset ``$IN`` would mean the working directory: every file under it),
    or that exists but is a FIFO, a device or a socket (or a folder when ``folder_ok`` is false), saying what it is
    instead of "does not exist". A missing path is left to the reader, whose message names it."""
    from diffcore.paths import not_a_file_reason

    if os.fspath(path).strip() == "":
        raise UsageError(f"{option} is an empty path (an unset variable?); give the file or folder explicitly "
                         "(. for the working directory)")
    reason = not_a_file_reason(path)
    if reason and reason != "does not exist" and not (folder_ok and reason.startswith("is a folder")):
        raise UsageError(f"{option} {os.fspath(path)}: {reason}")


def check_output_dir(path: str | os.PathLike, option: str = "--out", need_bytes: int = 0) -> None:
    """Before any expensive work: refuse an output folder that cannot be made or written, that is a file or lies
    under one, or whose file system has less than about ``need_bytes`` free; and an empty path (an unset variable
    would write into the working directory). Nothing is created here."""
    import shutil
    from pathlib import Path

    if os.fspath(path).strip() == "":
        raise UsageError(f"{option} is an empty path (an unset variable?); give a folder (. for the working "
                         "directory)")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{option} {p}: is a file, not a folder")
    probe = p
    while not probe.exists():  # the nearest existing ancestor decides whether the folder can be made
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"{option} {p}: cannot be made, because {probe} is a file")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {p}: cannot write into {probe} (permission denied or read-only)")
    if need_bytes and probe.exists():
        try:
            free = shutil.disk_usage(probe).free
        except OSError:
            return
        if free < need_bytes:
            raise UsageError(f"{option} {p}: only {free / 2**20:.1f} MiB free on its file system, about "
                             f"{need_bytes / 2**20:.1f} MiB needed")


def check_output_file(path: str | os.PathLike, suffixes: Sequence[str], option: str = "--out",
                      need_bytes: int = 0) -> None:
    """Before any expensive work: refuse an output file path that is a folder, lies under a file, sits in a folder
    that cannot be written, or exists as another kind of file than this command writes (``suffixes``, e.g.
    ``.wav``): an existing file is replaced only when it is one this command would write."""
    from pathlib import Path

    if os.fspath(path).strip() == "":
        raise UsageError(f"{option} is an empty path (an unset variable?); give a file name")
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{option} {p}: is a folder, but a file is to be written there")
    if p.suffix.lower() not in {s.lower() for s in suffixes}:
        raise UsageError(f"{option} {p}: this command writes {' or '.join(suffixes)} files here; name the file so")
    check_output_dir(p.parent if str(p.parent) else ".", option, need_bytes)
    if p.exists() and not p.is_file():
        raise UsageError(f"{option} {p}: exists and is not a regular file")


def debug_enabled(argv: Sequence[str] | None = None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("DIFFSTACK_DEBUG", "") not in ("", "0")


def run_cli(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` and return its exit status, reporting user-fixable errors as one line on stderr:
    ``ConfigError``, ``CheckpointError``, ``UsageError``, ``FileNotFoundError`` → status 2; ``TrainingError`` →
    status 1; Ctrl-C → 130. Anything else (a bug) propagates with its traceback. With ``--debug`` or
    ``DIFFSTACK_DEBUG=1`` every error propagates."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    try:
        code = main(argv)
    except (ConfigError, CheckpointError, UsageError, FileNotFoundError) as e:
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except TrainingError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse's own usage errors (status 2) and deliberate exits
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BrokenPipeError:  # output piped into a reader that stopped early (`diffwave --help | head`)
        try:
            sys.stdout = open(os.devnull, "w")  # so the interpreter's final flush does not fail again
        except OSError:
            pass
        return 141
    except OSError as e:  # a full disk, a read-only or missing folder, a path under a file: the user can fix it
        if debug:
            raise
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        return 2
    return int(code or 0)


def _one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (the promise is one ``error:`` line, whatever the message holds)."""
    if isinstance(e, FileNotFoundError) and e.filename is not None:
        return os_error_message(e)
    return " ".join(str(e).split())


Command = Callable[[list[str]], "int | None"]


def setup_logging() -> None:
    """INFO messages of the package on stderr as ``LEVEL: message``; chatty libraries only from WARNING up."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    for noisy in ("matplotlib", "PIL", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _usage(prog: str, commands: dict[str, tuple[Command, str]]) -> str:
    width = max(map(len, commands))
    lines = [f"usage: {prog} <command> [options]   ({prog} <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in commands.items()]
    return "\n".join(lines)


def _refuse_empty_arguments(args: Sequence[str]) -> None:
    """An empty argument is never meant: ``vocode "$IN"`` with ``$IN`` unset would vocode every audio file under the
    working directory, ``--out ""`` would write into it. Refused naming the option (or the position) it fills."""
    for i, arg in enumerate(args):
        if str(arg).strip() == "":
            before = str(args[i - 1]) if i else ""
            if before.startswith("-") and "=" not in before:
                what = f"{before} is an empty path or value"
            else:
                what = f"argument {i + 1} is empty"
            raise UsageError(f"{what} (an unset variable?); give it explicitly (. for the working directory)")
        if str(arg).startswith("--") and str(arg).endswith("=") and str(arg).count("=") == 1 and "." not in arg:
            raise UsageError(f"{arg} is an empty path or value (an unset variable?); give it explicitly")


def run_subcommands(prog: str, commands: dict[str, tuple[Command, str]], argv: Sequence[str] | None = None) -> int:
    """The body of a ``prog <command> [options]`` console entry point: ``commands`` maps each name to ``(function
    of the remaining arguments, one-line help)``. Logging is set up, errors are reported by :func:`run_cli`, an
    unknown command names the closest one. Returns the exit status."""
    import difflib

    def dispatch(args: list[str]) -> int | None:
        if not args or args[0] in ("-h", "--help"):
            print(_usage(prog, commands))
            return 0 if args else 2
        name, rest = args[0], args[1:]
        if name not in commands:
            close = difflib.get_close_matches(name, list(commands), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UsageError(f"unknown command {name!r}{hint} (commands: {', '.join(commands)})")
        _refuse_empty_arguments(rest)
        return commands[name][0](rest)

    setup_logging()
    return run_cli(dispatch, list(sys.argv[1:] if argv is None else argv))
