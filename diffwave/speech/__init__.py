"""A few seconds of real, public-domain speech shipped with the package, so the main job runs without any data.

Two clips of LJSpeech 1.1 (Keith Ito and Linda Johnson, 2017; public domain; one female US English speaker reading
non-fiction, recorded 2016-2017), 22 050 Hz, 16-bit, stored as FLAC:

- ``LJ001-0007.flac``: the first 4.0 s of LJ001-0007;
- ``LJ001-0013.flac``: LJ001-0013 whole (2.6 s).

Both are among the clips that the shipped vocoders' recipe holds out from training (``data.holdout: 3`` of the 24
shared clips LJ001-0001 … LJ001-0024: LJ001-0007, -0013 and -0018), so vocoding them is a test on unseen speech.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SPEECH_DIR", "speech_files"]

SPEECH_DIR = Path(__file__).resolve().parent


def speech_files() -> list[Path]:
    """The shipped clips, sorted by name."""
    return sorted(SPEECH_DIR.glob("*.flac"))
