"""Helpers of the bad-input suites: run a command in-process and read its single ``error:`` line."""

from __future__ import annotations

import os


def error_line(err: str, *must_contain: str) -> str:
    """The single ``error: ...`` line of a command's stderr (logging lines may surround it)."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    for text in must_contain:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def _run(main, capsys, args) -> tuple[int, str]:
    os.environ.pop("DIFFSTACK_DEBUG", None)
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def wave_cli(capsys, *args) -> tuple[int, str]:
    """``diffwave ARGS`` in this process: ``(exit status, stderr)``."""
    from diffwave.cli import main

    return _run(main, capsys, args)


def image_cli(capsys, *args) -> tuple[int, str]:
    """``diffimage ARGS`` in this process: ``(exit status, stderr)``."""
    from diffimage.cli import main

    return _run(main, capsys, args)
