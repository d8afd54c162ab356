"""``python -m diffimage <command> ...``: the same as the ``diffimage`` console command."""

from diffimage.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
