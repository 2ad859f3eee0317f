"""`gatedrnn build`: compile the fused C++ engine ahead of time (Docker images, clusters), instead of at
the first use of a layer. Prints where the library is and how long it took; exit 2 with one line when the
build fails (the cause and the path of the whole log)."""
from __future__ import annotations

import argparse

from gatedrnn.cli import CLIError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("The library goes to $GATEDRNN_CACHE_DIR (else $XDG_CACHE_HOME/gatedrnn, else ~/.cache/gatedrnn); "
                     "it is specific to this CPU, torch and Python.")


def run(args: argparse.Namespace) -> int:
    from gatedrnn.engine import _build

    try:
        library, seconds = _build.build()
    except _build.BuildError as error:
        raise CLIError(f"could not build the fused C++ engine: {error}") from None
    print(f"fused C++ engine ready: {library} ({seconds:.1f} s)")
    return 0
