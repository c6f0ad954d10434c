"""Streaming Pearson correlation between two groups of variables, accumulated batch by batch."""

from __future__ import annotations

import torch


class StreamingPearson:
    """Pearson correlation of every column of ``x`` with every column of ``y``, without keeping the rows.

    Uses the shifted-data sums: every row is shifted by the mean of the first batch (so the sums
    stay small and the final subtraction does not cancel), the products are accumulated in place in
    float32 with one ``addmm`` per batch, and folded into float64 totals every ``fold_every`` batches.
    Memory is O(n_x * n_y), independent of the number of rows seen.
    """

    def __init__(self, n_x: int, n_y: int, fold_every: int = 16) -> None:
        self.count = 0
        self.fold_every = fold_every
        self._pending = 0
        self.shift_x = torch.zeros(n_x)
        self.shift_y = torch.zeros(n_y)
        self._partial = self._zeros(n_x, n_y, torch.float32)
        self._total = self._zeros(n_x, n_y, torch.float64)

    @staticmethod
    def _zeros(n_x: int, n_y: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        return {
            "x": torch.zeros(n_x, dtype=dtype),
            "y": torch.zeros(n_y, dtype=dtype),
            "xx": torch.zeros(n_x, dtype=dtype),
            "yy": torch.zeros(n_y, dtype=dtype),
            "xy": torch.zeros(n_x, n_y, dtype=dtype),
        }

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows: ``x`` is (rows, n_x), ``y`` is (rows, n_y), row i of both from the same observation."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}.")
        if x.shape[1] != self.shift_x.numel() or y.shape[1] != self.shift_y.numel():
            raise ValueError(
                f"Expected {self.shift_x.numel()} x-columns and {self.shift_y.numel()} y-columns, "
                f"got {x.shape[1]} and {y.shape[1]}."
            )
        if x.shape[0] == 0:
            return
        x, y = x.float(), y.float()
        if self.count == 0:
            self.shift_x, self.shift_y = x.mean(0), y.mean(0)
        xs, ys = x - self.shift_x, y - self.shift_y
        part = self._partial
        part["x"] += xs.sum(0)
        part["y"] += ys.sum(0)
        part["xx"] += (xs * xs).sum(0)
        part["yy"] += (ys * ys).sum(0)
        torch.addmm(part["xy"], xs.T, ys, out=part["xy"])
        self.count += x.shape[0]
        self._pending += 1
        if self._pending >= self.fold_every:
            self._fold()

    def _fold(self) -> None:
        for key, value in self._partial.items():
            self._total[key] += value.double()
            value.zero_()
        self._pending = 0

    def correlation(self) -> torch.Tensor:
        """The (n_x, n_y) Pearson matrix; 0 where a variable was constant (its correlation is undefined)."""
        if self.count < 2:
            raise ValueError(f"Pearson correlation needs at least 2 observations, got {self.count}.")
        self._fold()
        t, n = self._total, self.count
        cov = t["xy"] - torch.outer(t["x"], t["y"]) / n
        var_x = (t["xx"] - t["x"] * t["x"] / n).clamp_min(0)
        var_y = (t["yy"] - t["y"] * t["y"] / n).clamp_min(0)
        denominator = torch.sqrt(torch.outer(var_x, var_y))
        # A variance at rounding level (relative to the squared shift) means the variable was constant.
        tiny_x = var_x <= 1e-10 * (t["xx"] + n * self.shift_x.double() ** 2 + 1e-30)
        tiny_y = var_y <= 1e-10 * (t["yy"] + n * self.shift_y.double() ** 2 + 1e-30)
        valid = ~(tiny_x[:, None] | tiny_y[None, :])
        corr = torch.where(valid, cov / denominator.clamp_min(1e-300), torch.zeros((), dtype=torch.float64))
        return corr.clamp_(-1.0, 1.0)
