"""fc6/fc7 and the two outputs: class scores and class-specific box deltas."""
from __future__ import annotations

import torch
from torch import nn


class SPPHead(nn.Module):
    """fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout, then a (C+1)-way classifier and
    class-specific box regression (4 deltas per foreground class).

    forward(x: (K, in_features)) -> (logits (K, C + 1), deltas (K, 4 * C)).
    Initialised as Fast R-CNN: classifier N(0, 0.01), regressor N(0, 0.001), zero bias.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 4096, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc6 = nn.Linear(in_features, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)
        self.cls_score = nn.Linear(hidden, num_classes + 1)
        self.bbox_pred = nn.Linear(hidden, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """fc7 activations (K, hidden): what the paper's SVMs are trained on."""
        x = self.drop(torch.relu(self.fc6(x)))
        return self.drop(torch.relu(self.fc7(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.cls_score(h), self.bbox_pred(h)
