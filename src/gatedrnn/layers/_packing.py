"""PackedSequence data <-> a padded, length-sorted (T, B, F) batch, differentiable both ways."""
from __future__ import annotations

import torch
from torch import Tensor


def _index(batch_sizes: Tensor) -> tuple[Tensor, Tensor]:
    """Packed row k holds step t_idx[k] of sequence b_idx[k]: (sum(batch_sizes),) each."""
    t_idx = torch.repeat_interleave(torch.arange(len(batch_sizes)), batch_sizes)
    starts = torch.cumsum(batch_sizes, 0) - batch_sizes
    b_idx = torch.arange(int(batch_sizes.sum())) - torch.repeat_interleave(starts, batch_sizes)
    return t_idx, b_idx


def packed_to_padded(data: Tensor, batch_sizes: Tensor) -> tuple[Tensor, list[int]]:
    """data (sum(lengths), F) -> (padded (T, B, F) with zeros after each sequence's end, batch_sizes as ints)."""
    sizes = batch_sizes.tolist()
    if not sizes or any(b <= 0 for b in sizes) or any(a < b for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"batch_sizes should be positive and non-increasing, got {sizes}")
    if sum(sizes) != data.shape[0]:
        raise ValueError(f"packed data should have sum(batch_sizes) = {sum(sizes)} rows, got {data.shape[0]}")
    t_idx, b_idx = _index(batch_sizes)
    padded = data.new_zeros((len(sizes), sizes[0]) + tuple(data.shape[1:]))
    padded = padded.index_put((t_idx, b_idx), data)
    return padded, sizes


def padded_to_packed(padded: Tensor, batch_sizes: Tensor) -> Tensor:
    """padded (T, B, F) -> packed data (sum(batch_sizes), F), in PackedSequence's time-major order."""
    t_idx, b_idx = _index(batch_sizes)
    return padded[t_idx, b_idx]
