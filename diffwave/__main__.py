"""``python -m diffwave <command> ...``: the same as the ``diffwave`` console command."""

from diffwave.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
