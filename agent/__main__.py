"""`python -m agent` is `sandboxed-agent`, whose console script calls `main` here.

The command line is imported inside `main`, not above it: importing it takes seconds
on a loaded machine, and a Ctrl-C in that time was a traceback of whichever import it
hit. It ends as a Ctrl-C later does: one line, exit 130.
"""

import sys


def main() -> int:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("sandboxed-agent: interrupted", file=sys.stderr)
        return 130
    return run()


if __name__ == "__main__":
    sys.exit(main())
