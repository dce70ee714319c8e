"""Heads on fixed features: standardisation, linear and MLP classifiers."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


class Standardize(nn.Module):
    """x -> (x - mean) / std with training-split statistics kept as buffers (saved in checkpoints)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, features: np.ndarray | Tensor) -> None:
        """Set mean/std from training features [N, D]; constant columns get std 1."""
        x = torch.as_tensor(np.asarray(features), dtype=torch.float64)
        mean = x.mean(0)
        std = x.std(0, unbiased=False)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))
        self.mean.copy_(mean.float())
        self.std.copy_(std.float())

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class LinearHead(nn.Module):
    """Optional standardisation followed by one linear layer: logits = W x + b."""

    def __init__(self, in_dim: int, num_classes: int, standardize: bool = True) -> None:
        super().__init__()
        self.norm = Standardize(in_dim) if standardize else nn.Identity()
        self.classifier = nn.Linear(in_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.norm(x))


class MLPHead(nn.Module):
    """Standardisation, then Linear-ReLU-Dropout blocks, then a linear classifier."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        hidden_dim: int = 256,
        num_layers: int = 1,
        dropout: float = 0.1,
        standardize: bool = True,
    ) -> None:
        super().__init__()
        self.norm = Standardize(in_dim) if standardize else nn.Identity()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(num_layers):
            layers += [nn.Linear(d, hidden_dim), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            d = hidden_dim
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(d, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(self.norm(x)))
