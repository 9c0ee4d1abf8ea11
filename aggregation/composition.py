"""Pre-aggregation as small linear maps over the rows of one update matrix.

Clipping, ARC, nearest-neighbour mixing and bucketing all output rows that are
linear combinations of the input rows: Y = A @ X with A of shape (n', n). Their
decisions need only row norms or pairwise distances, and those of Y follow
from the Gram matrix of X: G_Y = A G_X Aᵀ. So a whole chain such as
``arc -> nnm -> trimmed_mean`` reads X once for the Gram matrix, composes the
maps in n × n space, and materialises at most one (n', d) matrix — or none,
when the final rule is itself a weighted sum (mean, Multi-Krum).
"""

from __future__ import annotations

import torch

from .distances import gram_matrix, row_norms


class RowComposition:
    """The rows ``A @ X`` of a chain of linear pre-aggregation steps, kept unmaterialised.

    ``X`` is never modified. Norms and the Gram matrix of X are computed lazily,
    once, in float64.
    """

    def __init__(self, updates: torch.Tensor) -> None:
        self._updates = updates
        n = updates.shape[0]
        self._map = torch.eye(n, dtype=torch.float64, device=updates.device)
        self._is_diagonal = True
        self._is_identity = True
        self._base_gram: torch.Tensor | None = None
        self._base_norms: torch.Tensor | None = None
        self._materialised: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        """Rows the next step receives."""
        return int(self._map.shape[0])

    @property
    def updates(self) -> torch.Tensor:
        """The original (n, d) matrix."""
        return self._updates

    @property
    def linear_map(self) -> torch.Tensor:
        """The composed (n', n) float64 map A."""
        return self._map

    def apply(self, step_map: torch.Tensor, *, diagonal: bool = False) -> None:
        """Compose one more step: rows become ``step_map @ (current rows)``."""
        self._map = step_map.to(device=self._map.device, dtype=torch.float64) @ self._map
        self._is_diagonal = self._is_diagonal and diagonal
        self._is_identity = False
        self._materialised = None

    def norms(self) -> torch.Tensor:
        """L2 norms of the current rows (float64); a diagonal chain needs no Gram matrix."""
        if self._is_diagonal:
            return torch.diagonal(self._map).abs() * self._base_row_norms()
        return torch.diagonal(self.gram()).clamp(min=0.0).sqrt()

    def gram(self) -> torch.Tensor:
        """Gram matrix of the current rows, A G Aᵀ (float64)."""
        base = self._gram_of_updates()
        return self._map @ base @ self._map.T

    def squared_distances(self) -> torch.Tensor:
        """(n', n') squared distances between current rows, zero diagonal, no negatives."""
        gram = self.gram()
        squared_norms = torch.diagonal(gram)
        distances = squared_norms[:, None] + squared_norms[None, :] - 2.0 * gram
        distances.clamp_(min=0.0)
        distances.fill_diagonal_(0.0)
        return distances

    def combine(self, row_weights: torch.Tensor) -> torch.Tensor:
        """Σᵢ wᵢ · (current row i), computed as (wᵀA) @ X: one pass, no materialisation."""
        coefficients = row_weights.to(device=self._map.device, dtype=torch.float64) @ self._map
        return coefficients.to(self._updates.dtype) @ self._updates

    def pending_map(self) -> torch.Tensor | None:
        """The composed map A for a kernel that reduces A @ X tile by tile; None if identity.

        Lets coordinate-wise rules read X once without ever holding the (n', d)
        rows (``kernels.py``): at n = 200, d = 10⁷ that is 40 MB instead of 7.6 GB.
        """
        return None if self._is_identity else self._map

    def materialise(self) -> torch.Tensor:
        """The current rows as an (n', d) matrix; X itself when no step changed it."""
        if self._is_identity:
            return self._updates
        if self._materialised is None:
            self._materialised = self._map.to(self._updates.dtype) @ self._updates
        return self._materialised

    def _gram_of_updates(self) -> torch.Tensor:
        if self._base_gram is None:
            self._base_gram = gram_matrix(self._updates)
        return self._base_gram

    def _base_row_norms(self) -> torch.Tensor:
        if self._base_norms is None:
            if self._base_gram is not None:
                self._base_norms = torch.diagonal(self._base_gram).clamp(min=0.0).sqrt()
            else:
                self._base_norms = row_norms(self._updates)
        return self._base_norms
