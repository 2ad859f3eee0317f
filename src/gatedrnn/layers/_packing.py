"""PackedSequence data <-> a padded, length-sorted (T, B, F) batch, differentiable both ways."""
from __future__ import annotations

import torch
from torch import Tensor

from gatedrnn.layers._checks import PackingError


def _index(batch_sizes: Tensor) -> tuple[Tensor, Tensor]:
    """Packed row k holds step t_idx[k] of sequence b_idx[k]: (sum(batch_sizes),) each."""
    t_idx = torch.repeat_interleave(torch.arange(len(batch_sizes)), batch_sizes)
    starts = torch.cumsum(batch_sizes, 0) - batch_sizes
    b_idx = torch.arange(int(batch_sizes.sum())) - torch.repeat_interleave(starts, batch_sizes)
    return t_idx, b_idx


def packed_to_padded(data: Tensor, batch_sizes: Tensor) -> tuple[Tensor, list[int]]:
    """data (sum(lengths), F) -> (padded (T, B, F) with zeros after each sequence's end, batch_sizes as ints)."""
    if batch_sizes.dim() != 1 or batch_sizes.is_floating_point() or batch_sizes.is_complex():
        raise PackingError(
            f"batch_sizes should be a 1-D integer tensor, got {batch_sizes.dim()}-D of dtype {batch_sizes.dtype}"
        )
    sizes = batch_sizes.tolist()
    if not sizes or any(b <= 0 for b in sizes) or any(a < b for a, b in zip(sizes, sizes[1:])):
        raise PackingError(f"batch_sizes should be positive and non-increasing, got {sizes}")
    if sum(sizes) != data.shape[0]:
        raise PackingError(f"packed data should have sum(batch_sizes) = {sum(sizes)} rows, got {data.shape[0]}")
    t_idx, b_idx = _index(batch_sizes)
    padded = data.new_zeros((len(sizes), sizes[0]) + tuple(data.shape[1:]))
    padded = padded.index_put((t_idx, b_idx), data)
    return padded, sizes


def check_indices(sorted_indices, unsorted_indices, batch: int) -> None:
    """A hand-built PackedSequence's index tensors: permutations of range(batch), inverse to each other."""
    expected = torch.arange(batch)
    for name, indices in (("sorted_indices", sorted_indices), ("unsorted_indices", unsorted_indices)):
        if indices is None:
            continue
        is_permutation = indices.dim() == 1 and torch.equal(indices.sort().values.cpu().long(), expected)
        if indices.is_floating_point() or not is_permutation:
            raise PackingError(
                f"PackedSequence.{name} should be a permutation of range({batch}) (batch_sizes[0] = {batch}), "
                f"got {indices.tolist()}"
            )
    if sorted_indices is not None and unsorted_indices is not None:
        if not torch.equal(sorted_indices[unsorted_indices].cpu(), expected):
            raise PackingError(
                f"PackedSequence.unsorted_indices should invert sorted_indices {sorted_indices.tolist()}, "
                f"got {unsorted_indices.tolist()}"
            )


def padded_to_packed(padded: Tensor, batch_sizes: Tensor) -> Tensor:
    """padded (T, B, F) -> packed data (sum(batch_sizes), F), in PackedSequence's time-major order."""
    t_idx, b_idx = _index(batch_sizes)
    return padded[t_idx, b_idx]
