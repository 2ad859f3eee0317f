"""torch.nn's parameter names of a recurrent layer and how to read them, in one place for the layers' forward
and for streaming steps (which must not import the layer classes)."""
from __future__ import annotations

from typing import Optional

from torch import Tensor
from torch.nn import Module

# torch.nn's five weights of one layer and direction, in the engine's (LayerWeights') order
KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")

_NAMES: dict[tuple, tuple[tuple[str, ...], tuple[str, ...]]] = {}
_FLAT: dict[int, tuple[str, ...]] = {}
_STREAM: dict[tuple[int, bool, bool], tuple[tuple[Optional[str], ...], int]] = {}


def weight_names(layer: int, direction: int, extra: tuple[str, ...] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(torch.nn's parameter names of one layer and direction in KINDS order, the cell's extra ones), memoised in a
    plain dict (dynamo warns about functools.lru_cache under torch.compile)."""
    key = (layer, direction, extra)
    names = _NAMES.get(key)
    if names is None:
        suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
        names = _NAMES[key] = (tuple(kind + suffix for kind in KINDS), tuple(name + suffix for name in extra))
    return names


def flat_weight_names(num_layers: int) -> tuple[str, ...]:
    """KINDS for every layer of a unidirectional stack, in order: the streaming step kernel's weight list."""
    names = _FLAT.get(num_layers)
    if names is None:
        names = _FLAT[num_layers] = tuple(name for layer in range(num_layers) for name in weight_names(layer, 0)[0])
    return names


def read_weight(module, name: str) -> Optional[Tensor]:
    """The module's weight `name`: a dict read for a registered parameter (nn.Module.__getattr__ costs ~1 µs each),
    getattr for the rest: a parametrized weight (torch.nn.utils.parametrize), or None (bias=False, no proj_size)."""
    params = module._parameters
    if name in params:
        return params[name]
    # Absent (bias=False, no proj_size): what getattr would find nowhere, without the AttributeError it raises and
    # catches inside (~1.5 us; forward reads every name of every layer at every call).
    if (name not in module.__dict__ and name not in module._buffers and name not in module._modules
            and type(module).__getattr__ is Module.__getattr__ and not hasattr(type(module), name)):
        return None
    return getattr(module, name, None)


def stream_weights(module) -> tuple[dict[str, Optional[Tensor]], tuple[Optional[str], ...]]:
    """(a dict of weights by name, the names of a unidirectional stack in `flat_weight_names` order with None where
    the layer has no such weight (bias=False, no proj_size)): the streaming step kernel's weights, read by it from
    the dict, as forward reads them. A step at batch 1 costs a few µs, so the dict is the layer's own parameter dict
    and the names of absent weights are known from the layer's settings, not looked up; where the registered
    parameters are not exactly those (a parametrized weight, one registered or deleted later), every name is read
    now as forward reads it."""
    key = (module.num_layers, module.bias, bool(module.proj_size))
    cached = _STREAM.get(key)
    if cached is None:
        names = tuple(None if (kind.startswith("bias") and not key[1]) or (kind == "weight_hr" and not key[2]) else name
                      for name in flat_weight_names(key[0]) for kind in [name.rsplit("_", 1)[0]])
        cached = _STREAM[key] = (names, sum(name is not None for name in names))
    names, count = cached
    params = module._parameters
    if len(params) == count:  # exactly these names, or the kernel finds one missing and declines
        return params, names
    names = flat_weight_names(key[0])
    return {name: read_weight(module, name) for name in names}, names
