r"""Gate-bias initialisations for gated layers: the forget-gate bias and chrono init, the one place their
formulas live. They run after torch.nn's init (every parameter ~ U(-1/sqrt(H), 1/sqrt(H))) and only
overwrite bias blocks; weights, state_dict keys and shapes stay as torch.nn's.

Symbols: H hidden_size, G the gate count; b_ih, b_hh the two (G*H,) bias vectors of one layer and direction,
stacked in torch.nn's gate order (LSTM i, f, g, o; GRU r, z, n). Every gate sees their sum, the effective
bias b = b_ih + b_hh. These functions set a gate's block of b_ih to the value and its block of b_hh to 0,
so the effective bias is exactly the value (and both vectors stay in torch.nn's layout).

The gate a value goes to is read from the cell table (`gatedrnn.cells.CELL_SPECS`): the hold gate
(`spec.hold_gate`: LSTM f, GRU z), whose value near 1 keeps the memory, and the write gate
(`spec.write_gate`: LSTM i; for the GRU the write gate is 1 - z, `spec.write_gate_inverted`).

Forget-gate bias (Jozefowicz, Zaremba & Sutskever 2015, "An Empirical Exploration of Recurrent Network
Architectures"; Keras' `unit_forget_bias`):

    b_hold = value                      (LSTM: b_f; GRU: b_z), every unit

Chrono init (Tallec & Ollivier 2018, "Can recurrent neural networks warp time?", ICLR), T_max = chrono_max:

    u ~ U(1, T_max - 1), one draw per unit (H draws per layer and direction, torch's default generator)
    LSTM:  b_f = log(u),  b_i = -b_f
    GRU:   b_z = log(u)

so the hold gate starts at sigma(log u) = u / (1 + u), a memory of about u steps, spread over [1, T_max - 1].
The paper writes the gated update as h_{t+1} = g_t * tanh(...) + (1 - g_t) * h_t: its gate g lets new
content in (a write gate), and chrono sets b_g = -log(u). torch's GRU is h' = (1 - z) * n + z * h, so
z = 1 - g: the same init is b_z = +log(u). The paper's input-gate rule b_i = -b_f has no separate GRU
counterpart (1 - z is already the write gate), so the GRU's r and n biases keep torch's init.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

INITS = ("default", "chrono")


def _block(spec, gate: str, hidden_size: int) -> slice:
    """The rows of gate `gate` in a (G*H,) bias: gate k of spec.gate_names is rows [k*H, (k+1)*H)."""
    k = spec.gate_names.index(gate)
    return slice(k * hidden_size, (k + 1) * hidden_size)


def _bias_pairs(layer: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """(b_ih, b_hh) of every layer and direction, each (G*H,)."""
    pairs = []
    for index in range(layer.num_layers):
        for direction in range(layer.num_directions):
            weights = layer.layer_weights(index, direction)
            if weights.b_ih is None or weights.b_hh is None:
                raise ValueError(f"gate-bias init needs a layer with biases, got bias={layer.bias}")
            pairs.append((weights.b_ih, weights.b_hh))
    return pairs


def _set_gate_bias(b_ih: Tensor, b_hh: Tensor, rows: slice, value: Tensor) -> None:
    """Effective bias b_ih[rows] + b_hh[rows] = value: all of it in b_ih, b_hh's block 0."""
    b_ih[rows] = value
    b_hh[rows] = 0.0


def _hold_gate(layer: nn.Module) -> str:
    gate = layer.spec.hold_gate
    if gate is None:
        raise ValueError(f"gate-bias init needs a gated cell (LSTM or GRU), got {layer.spec.display_name}")
    return gate


@torch.no_grad()
def forget_gate_bias_(layer: nn.Module, value: float) -> None:
    """Set the hold gate's effective bias (LSTM f, GRU z) to `value` in every layer and direction, in place."""
    rows = _block(layer.spec, _hold_gate(layer), layer.hidden_size)
    for b_ih, b_hh in _bias_pairs(layer):
        _set_gate_bias(b_ih, b_hh, rows, torch.full((layer.hidden_size,), float(value), dtype=b_ih.dtype,
                                                    device=b_ih.device))


@torch.no_grad()
def chrono_init_(layer: nn.Module, chrono_max: int) -> None:
    """Chrono init (see the module docstring) of every layer and direction, in place: per unit
    u ~ U(1, chrono_max - 1), hold-gate bias log(u); for a cell whose write gate is its own gate (LSTM i),
    that gate's bias -log(u)."""
    spec, H = layer.spec, layer.hidden_size
    hold = _block(spec, _hold_gate(layer), H)
    write = None if spec.write_gate_inverted or spec.write_gate is None else _block(spec, spec.write_gate, H)
    for b_ih, b_hh in _bias_pairs(layer):
        u = torch.empty(H, dtype=b_ih.dtype, device=b_ih.device).uniform_(1.0, chrono_max - 1.0)  # (H,)
        b_hold = torch.log(u)  # (H,), in [0, log(T_max - 1)]
        _set_gate_bias(b_ih, b_hh, hold, b_hold)
        if write is not None:
            _set_gate_bias(b_ih, b_hh, write, -b_hold)


def check_init_options(init: str, forget_bias: Optional[float], chrono_max: Optional[int]) -> None:
    """Raise ValueError/TypeError naming what was expected for an invalid combination of options."""
    if not isinstance(init, str) or init not in INITS:
        raise ValueError(f"init should be one of {list(INITS)}, got {init!r}")
    if forget_bias is not None:
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)):
            raise TypeError(f"forget_bias should be a float or None, got {type(forget_bias).__name__}")
        if not math.isfinite(forget_bias):
            raise ValueError(f"forget_bias should be a finite number, got {forget_bias!r}")
        if init == "chrono":
            raise ValueError("forget_bias and init='chrono' both set the forget-gate bias: expected one of them, "
                             f"got forget_bias={forget_bias!r} with init='chrono'")
    if init == "chrono":
        if chrono_max is None:
            raise ValueError("init='chrono' needs chrono_max (T_max, the longest dependency to expect): "
                             "expected an integer >= 2, got None")
        if isinstance(chrono_max, bool) or not isinstance(chrono_max, int):
            raise TypeError(f"chrono_max should be an integer >= 2, got {type(chrono_max).__name__} {chrono_max!r}")
        if chrono_max < 2:
            raise ValueError(f"chrono_max should be an integer >= 2, got {chrono_max}")
    elif chrono_max is not None:
        raise ValueError(f"chrono_max is only used with init='chrono', got chrono_max={chrono_max!r} "
                         f"with init={init!r}")


def apply_init_(layer: nn.Module) -> None:
    """Apply a layer's stored options (`layer.init`, `layer.forget_bias`, `layer.chrono_max`) after torch's init."""
    if getattr(layer, "forget_bias", None) is not None:
        forget_gate_bias_(layer, layer.forget_bias)
    if getattr(layer, "init", "default") == "chrono":
        chrono_init_(layer, layer.chrono_max)
