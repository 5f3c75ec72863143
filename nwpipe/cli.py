"""Command line interface (being built)."""

import sys

from nwpipe import __version__


def main(argv=None) -> int:
    print(f"nwpipe {__version__}", file=sys.stderr)
    return 0
