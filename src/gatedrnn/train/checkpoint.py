"""Checkpoints: one directory per snapshot, written atomically, checked on every load.

A checkpoint directory holds three files:
    model.safetensors  the model's weights (state_dict of the unwrapped model)
    meta.json          format tag, TrainConfig, task name + options, model class + config, metrics,
                       position (epoch, step), library versions, the sha256 + size of the other two, and
                       `meta_sha256`: the sha256 of meta.json's own canonical JSON without that key
    state.pt           what resuming needs: optimizer, scheduler, RNG states, data position, trainer
                       counters; only tensors, numbers, strings, lists and dicts (loads with weights_only)

Writing goes to a hidden sibling directory first (each file flushed and fsynced), then the old
directory is moved aside and the new one renamed into place, so a crash at any moment leaves either the
old or the new checkpoint complete, never a mix. Hidden folders left by writers that were killed are
removed at the next save. Loading verifies the format tag, meta.json's own digest and both file digests
before it touches anything: a truncated, modified or foreign file raises `CheckpointError`, naming it.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

FORMAT = "gatedrnn-checkpoint"
FORMAT_VERSION = 2  # 2: meta.json carries meta_sha256 (version 1 files, without it, still load)
WEIGHTS_FILE, META_FILE, STATE_FILE = "model.safetensors", "meta.json", "state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, modified, foreign or mismatched.
    The message names the file and what is wrong with it."""


# ----- atomic writing -----
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and os.replace."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_synced(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's process
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove `.<name>.tmp-<pid>` folders next to `target` whose writer process no longer runs."""
    removed = []
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def atomic_write_dir(target: str | os.PathLike, files: Mapping[str, bytes]) -> Path:
    """Replace directory `target` by one holding `files` (name -> content), all or nothing."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, data in files.items():
            _write_synced(tmp / name, data)
        _fsync_dir(tmp)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for stale in [old, *target.parent.glob(f".{target.name}.old-*")]:  # also copies left by a crashed process
        shutil.rmtree(stale, ignore_errors=True)
    return target


def recover_dir(target: Path) -> Path:
    """If a crash fell between the two renames of `atomic_write_dir`, the complete old copy is aside."""
    if target.exists():
        return target
    aside = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    return aside[-1] if aside else target


# ----- serialisation -----
def _digest(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def meta_digest(meta: Mapping[str, Any]) -> str:
    """sha256 of meta.json's content without its `meta_sha256` key, as canonical JSON (sorted keys, no
    spaces): any change of a value is caught, a change of whitespace is not."""
    body = {key: value for key, value in meta.items() if key != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _versions() -> dict[str, str]:
    import numpy

    import gatedrnn

    return {"gatedrnn": gatedrnn.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    model: nn.Module,
    config: Mapping[str, Any],
    task_name: str,
    task_options: Mapping[str, Any],
    metrics: Mapping[str, Any],
    position: Mapping[str, int],
    state: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write a checkpoint directory atomically. `state` (optimizer, scheduler, RNG, counters) makes it
    resumable; without it only the model can be loaded."""
    from safetensors.torch import save as safetensors_save

    model = unwrap(model)
    weights = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    weights_bytes = safetensors_save(weights)
    buffer = io.BytesIO()
    torch.save(dict(state or {}), buffer)
    state_bytes = buffer.getvalue()
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": dict(config),
        "task": {"name": task_name, "options": dict(task_options)},
        "model": {"class": type(model).__name__, "config": dict(getattr(model, "config", {}) or {})},
        "metrics": dict(metrics),
        "position": dict(position),
        "versions": _versions(),
        "files": {WEIGHTS_FILE: _digest(weights_bytes), STATE_FILE: _digest(state_bytes)},
    }
    meta = json.loads(json.dumps(meta, default=str))  # the digest is of what a reader will see
    meta["meta_sha256"] = meta_digest(meta)
    meta_bytes = json.dumps(meta, indent=2, sort_keys=True).encode("utf-8")
    return atomic_write_dir(directory, {WEIGHTS_FILE: weights_bytes, STATE_FILE: state_bytes, META_FILE: meta_bytes})


# ----- reading and checking -----
def resolve_checkpoint(path: str | os.PathLike, *, prefer: str = "best") -> Path:
    """A checkpoint directory from: a checkpoint directory, a file inside one, or a run directory
    (then its `best/`, else `last/`; `prefer="last"` swaps the order)."""
    path = Path(path)
    if path.is_file():
        if path.name in (WEIGHTS_FILE, META_FILE, STATE_FILE):
            return path.parent
        raise CheckpointError(
            f"{str(path)!r} is not a gatedrnn checkpoint: expected a checkpoint directory holding "
            f"{WEIGHTS_FILE}, {META_FILE} and {STATE_FILE}, or a run directory holding best/ or last/"
        )
    if (path / META_FILE).exists() or (path / WEIGHTS_FILE).exists():
        return path
    order = ("best", "last") if prefer == "best" else ("last", "best")
    for name in order:
        candidate = recover_dir(path / name)
        if candidate.exists():
            return candidate
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    raise CheckpointError(
        f"{str(path)!r} holds no checkpoint: expected {META_FILE} + {WEIGHTS_FILE}, or a best/ or last/ directory"
    )


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """meta.json of a checkpoint directory, after checking it is ours and its files are intact."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{str(meta_path)!r} is missing: {str(directory)!r} is not a gatedrnn checkpoint")
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{str(meta_path)!r} is truncated or corrupt: not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{str(meta_path)!r} is not a gatedrnn checkpoint: format tag {found!r}, "
                              f"expected {FORMAT!r}")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{str(meta_path)!r} has format version {meta.get('format_version')}, newer than "
                              f"this gatedrnn reads ({FORMAT_VERSION}); upgrade gatedrnn")
    for key in ("config", "task", "files"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{str(meta_path)!r} lacks the {key!r} table: truncated or not a gatedrnn checkpoint")
    if meta.get("format_version", 0) >= 2 and meta.get("meta_sha256") != meta_digest(meta):
        raise CheckpointError(f"{str(meta_path)!r} was modified after it was written: its content does not match "
                              f"the meta_sha256 it records")
    return meta


def _read_checked(directory: Path, name: str, meta: Mapping[str, Any]) -> bytes:
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} is missing from the checkpoint")
    data = path.read_bytes()
    expected = meta["files"].get(name, {})
    if len(data) != expected.get("bytes") or hashlib.sha256(data).hexdigest() != expected.get("sha256"):
        raise CheckpointError(
            f"{str(path)!r} is truncated or modified: {len(data)} bytes, expected {expected.get('bytes')} "
            f"with the sha256 recorded in {META_FILE}"
        )
    return data


def read_weights(directory: str | os.PathLike, meta: Mapping[str, Any]) -> dict[str, Tensor]:
    from safetensors.torch import load as safetensors_load

    directory = Path(directory)
    data = _read_checked(directory, WEIGHTS_FILE, meta)
    try:
        return safetensors_load(data)
    except Exception as error:
        raise CheckpointError(f"{str(directory / WEIGHTS_FILE)!r} is not a readable safetensors file: {error}") from None


def read_state(directory: str | os.PathLike, meta: Mapping[str, Any]) -> dict[str, Any]:
    directory = Path(directory)
    data = _read_checked(directory, STATE_FILE, meta)
    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{str(directory / STATE_FILE)!r} cannot be read: {error}".replace("\n", " ")) from None


def load_weights_into(model: nn.Module, weights: Mapping[str, Tensor], source: Path) -> None:
    """load_state_dict(strict) with a CheckpointError that names the file and the mismatch."""
    expected = unwrap(model).state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in set(expected) & set(weights) if tuple(expected[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or wrong:
        details = "; ".join(part for part in (
            f"missing {missing[:4]}" if missing else "",
            f"unexpected {unexpected[:4]}" if unexpected else "",
            "shape mismatch " + ", ".join(f"{k} {tuple(weights[k].shape)} vs {tuple(expected[k].shape)}"
                                          for k in wrong[:4]) if wrong else "",
        ) if part)
        raise CheckpointError(f"{str(source)!r} does not fit the model {type(unwrap(model)).__name__}: {details}")
    unwrap(model).load_state_dict(dict(weights), strict=True)


def load_model(path: str | os.PathLike, *, prefer: str = "best"):
    """Rebuild a trained model from a checkpoint (directory, file inside it, or run directory).

    Returns (model, config, task): the model in eval mode with its weights, the `TrainConfig` it was
    trained with, and the task (`gatedrnn.tasks.get_task(name, **options)`) it was trained on.
    """
    from gatedrnn.tasks import get_task
    from gatedrnn.train.config import TrainConfig, layer_init

    directory = resolve_checkpoint(path, prefer=prefer)
    meta = read_meta(directory)
    weights = read_weights(directory, meta)
    try:
        config = TrainConfig.from_dict(meta["config"])
        task = get_task(meta["task"].get("name"), **meta["task"].get("options", {}))
        init = layer_init(config, task.options)
        model = task.build_model(config.cell, config.hidden_size, config.num_layers, config.dropout,
                                 **({"init": init} if init else {}))
    except (ValueError, TypeError) as error:  # ConfigError is a ValueError
        raise CheckpointError(f"{str(directory / META_FILE)!r} describes a model this gatedrnn cannot build: "
                              f"{error}") from None
    load_weights_into(model, weights, directory / WEIGHTS_FILE)
    model.eval()
    return model, config, task
