"""Run the `gatedrnn` command line in-process, as the CLI tests do."""
from __future__ import annotations

from gatedrnn.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `gatedrnn ARGV...`, argparse's own exits included."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err
