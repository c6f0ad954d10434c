"""Autograd Functions for NeFT's forward: the selected rows of a Linear's output get ``x @ D^T`` added.

Both save for backward only ``x`` (which the base layer keeps anyway), ``D``, the row index and, for
``linear_with_rows``, a reference to the frozen weight (no copy). Backward computes

    grad_x = g @ W + g[..., R] @ D        (accumulated into one buffer)
    grad_D = g[..., R]^T @ x

so no weight-sized tensor is ever created, and the update is added to the output in place instead
of through an out-of-place ``index_add`` that copies the whole output.

Under autocast the delta products run in the autocast dtype, as LoRA's do: ``x`` stays in bf16 and
the float32 delta is cast down for the product, and backward computes in that same dtype. Only the
delta's gradient is returned in float32 (the delta's own dtype), so the optimizer state stays float32.
Without autocast they run in the wider of the input's and the delta's dtype, as a merged weight would.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.nn import functional as F


def _compute_dtype(x: torch.Tensor, delta: torch.Tensor) -> torch.dtype:
    """The autocast dtype when autocast is on for ``x``'s device (and floats are involved), else the wider of
    ``x``'s and the delta's: bf16 deltas on a float32 model compute in float32, as the merged weight does."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and delta.is_floating_point():
        return torch.get_autocast_dtype(device)
    return torch.promote_types(x.dtype, delta.dtype) if x.is_floating_point() else delta.dtype


def _delta_product(x: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.to(dtype), delta.to(dtype))


def _rows_grad(grad: torch.Tensor, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return grad.index_select(-1, rows).to(dtype)


def _delta_grad(grad_rows: torch.Tensor, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    flat_x = x.reshape(-1, x.shape[-1]).to(grad_rows.dtype)
    return (grad_rows.reshape(-1, grad_rows.shape[-1]).T @ flat_x).to(delta.dtype)


class _LinearWithRows(torch.autograd.Function):
    """``F.linear(x, W, b)`` with ``x @ D^T`` added to output columns ``rows``."""

    @staticmethod
    def forward(ctx, x, weight, bias, delta, rows):
        out = F.linear(x, weight, bias)
        ctx.compute_dtype = _compute_dtype(x, delta)
        out.index_add_(-1, rows, _delta_product(x, delta, ctx.compute_dtype).to(out.dtype))
        needs_x, needs_weight, _, needs_delta = ctx.needs_input_grad[:4]
        # As autograd's own linear: keep the weight only for grad_x, and x only for weight/delta grads.
        ctx.save_for_backward(x if needs_weight or needs_delta else None, weight if needs_x else None, delta, rows)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, delta, rows = ctx.saved_tensors
        grad_rows = _rows_grad(grad, rows, ctx.compute_dtype)
        grad_x = grad_weight = grad_bias = grad_delta = None
        flat = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = flat @ weight
            rows_flat = grad_rows.reshape(-1, grad_rows.shape[-1])
            if grad_x.dtype == delta.dtype == ctx.compute_dtype:
                grad_x.addmm_(rows_flat, delta)  # accumulate into the same buffer: no extra add
            else:
                grad_x += (rows_flat @ delta.to(ctx.compute_dtype)).to(grad_x.dtype)
            grad_x = grad_x.reshape(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = flat.T @ x.reshape(-1, x.shape[-1])
        if ctx.needs_input_grad[2]:
            grad_bias = flat.sum(0)
        if ctx.needs_input_grad[3]:
            grad_delta = _delta_grad(grad_rows, x, delta)
        return grad_x, grad_weight, grad_bias, grad_delta, None


class _AddRows(torch.autograd.Function):
    """``out[..., rows] += x @ D^T`` in place, for any base layer's output ``out``."""

    @staticmethod
    def forward(ctx, out, x, delta, rows):
        ctx.compute_dtype = _compute_dtype(x, delta)
        out.index_add_(-1, rows, _delta_product(x, delta, ctx.compute_dtype).to(out.dtype))
        ctx.mark_dirty(out)
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(x if ctx.needs_input_grad[2] else None, delta, rows)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, delta, rows = ctx.saved_tensors
        grad_rows = _rows_grad(grad, rows, ctx.compute_dtype)
        grad_x = (grad_rows @ delta.to(ctx.compute_dtype)).to(ctx.x_dtype) if ctx.needs_input_grad[1] else None
        grad_delta = _delta_grad(grad_rows, x, delta) if ctx.needs_input_grad[2] else None
        return grad, grad_x, grad_delta, None


def linear_with_rows(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], delta: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` plus ``x @ delta^T`` in output columns ``rows``, in one autograd node."""
    return _LinearWithRows.apply(x, weight, bias, delta, rows)


def add_rows_(out: torch.Tensor, x: torch.Tensor, delta: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Add ``x @ delta^T`` into columns ``rows`` of ``out`` in place (``out`` must not be needed by its producer's backward)."""
    return _AddRows.apply(out, x, delta, rows)
