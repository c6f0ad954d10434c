"""NeFT <-> LoRA: one module's row-sparse update as LoRA factors, exactly or as its best rank-R approximation.

A module with selected rows ``R`` (k of them) and delta ``D`` (k x in) adds ``delta_W = S @ D`` to its weight,
where ``S`` is the (out x k) one-hot matrix with ``S[R[j], j] = 1``. That is a LoRA of rank k with
``lora_A = D`` and ``lora_B = S`` (scaling 1): every output of ``B @ (A @ x)`` is one product by 1.0 plus
zeros, so a LoRA model computes the NeFT update up to the rounding of the base GEMM (docs/layer.md,
"Export to LoRA").

When a rank limit R < k is required, the best rank-R approximation in the Frobenius norm (Eckart-Young) is the
truncated SVD ``D = U Σ Vᵀ``: ``lora_A = V_Rᵀ`` and ``lora_B = S @ U_R Σ_R``. ``S`` has orthonormal columns, so
this is also the truncated SVD of ``delta_W`` itself, what peft's ``convert_to_lora`` computes at rank R.

The reverse exists when every column of a LoRA's ``B`` has at most one non-zero entry: column j with value
``b`` in row ``i`` adds ``scaling * b * A[j]`` to row ``i`` only, a row-sparse update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class LoraFactors:
    """One module's LoRA: ``delta_W ≈ lora_B @ lora_A`` at scaling 1, and how far from the NeFT update it is."""

    lora_A: torch.Tensor
    lora_B: torch.Tensor
    relative_error: float = 0.0
    """``||S @ D - B @ A||_F / ||S @ D||_F``: 0.0 for the exact conversion."""

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])


def rows_to_lora(rows: torch.Tensor, delta: torch.Tensor, out_features: int,
                 max_rank: Optional[int] = None) -> LoraFactors:
    """LoRA factors of the update ``delta_W[rows] += delta``: exact (rank ``len(rows)``) unless ``max_rank`` is
    smaller than that, then the best rank-``max_rank`` approximation (truncated SVD), in ``delta``'s dtype."""
    k = int(rows.numel())
    if max_rank is None or k <= max_rank:
        one_hot = torch.zeros(out_features, k, dtype=delta.dtype, device=delta.device)
        one_hot[rows, torch.arange(k, device=delta.device)] = 1
        return LoraFactors(lora_A=delta, lora_B=one_hot)
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    total = float(s.square().sum())
    dropped = float(s[max_rank:].square().sum())
    lora_b = torch.zeros(out_features, max_rank, dtype=torch.float64, device=delta.device)
    lora_b[rows] = u[:, :max_rank] * s[:max_rank]
    return LoraFactors(lora_A=vh[:max_rank].to(delta.dtype).contiguous(), lora_B=lora_b.to(delta.dtype),
                       relative_error=(dropped / total) ** 0.5 if total > 0 else 0.0)


def lora_to_rows(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """``(rows, delta)`` of the row-sparse update ``scaling * lora_B @ lora_A`` (None if it is zero).

    Raises ``ValueError`` naming the first column of ``lora_B`` with several non-zero entries: such an update
    touches several rows at once and has no exact NeFT form.
    """
    nonzero = lora_B != 0
    per_column = nonzero.sum(0)
    if bool((per_column > 1).any()):
        column = int(torch.nonzero(per_column > 1)[0])
        raise ValueError(f"column {column} of lora_B has {int(per_column[column])} non-zero entries, so its update "
                         "touches several rows at once")
    columns = torch.nonzero(per_column == 1).flatten()
    if columns.numel() == 0:
        return None
    targets = nonzero[:, columns].float().argmax(0)
    scaled = lora_A[columns].double() * (lora_B[targets, columns].double() * scaling)[:, None]
    rows, inverse = torch.unique(targets, sorted=True, return_inverse=True)
    delta = torch.zeros(rows.numel(), lora_A.shape[1], dtype=torch.float64).index_add_(0, inverse, scaled)
    return rows, delta.to(lora_A.dtype)
