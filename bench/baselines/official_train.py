"""The official LaViSE training scheme, re-implemented for measurement only.

github.com/YuYang0901/LaViSE (MIT), ``train_explainer.py`` with its COCO reference set
(``MyCocoSegmentation``: one item per (image, object) annotation), batch size 1: for every
(image, object) pair and every epoch, the frozen CNN runs on the image up to the layer, the
feature map is multiplied by the object's mask downsampled to the feature grid (nearest), average
pooled, sent through the head, and the CSMR loss against all training words is stepped with Adam
(lr 1e-4). As there, the whole network is in train mode except its BatchNorm layers
(``set_bn_eval``: the head's BatchNorm1d too, which a batch of one needs), so the head's dropout
is active, and every step also ranks the words for its running accuracy and reads the loss back.

Differences that only make this baseline faster than the original: the CNN stops right after
the layer (the original replaces the later blocks by identities, then runs its avgpool), the
mask is resized here rather than by PIL in the data loader, and no image is decoded (the
reference images are in memory). The head (``lavise_fast.Explainer``) and the loss
(``lavise_fast.csmr_loss``) are the same functions as lavise_fast's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lavise_fast import Explainer, csmr_loss
from lavise_fast.layers import LayerFeatures

__all__ = ["OfficialTrainer"]


def _set_bn_eval(module: nn.Module) -> None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        module.eval()


class OfficialTrainer:
    """One (image, object) pair per optimisation step, the CNN re-run for every pair.

    ``reference.pair(i)`` gives (image [3, H, W], mask [H, W], label); ``words`` are the training
    words and ``vectors`` [V, D] their embeddings.
    """

    def __init__(
        self,
        model: nn.Module,
        reference,
        layer: str,
        words: Sequence[str],
        vectors: torch.Tensor,
        *,
        lr: float = 1e-4,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.reference = reference
        self.layer = layer
        self.index = {w: i for i, w in enumerate(words)}
        self.vectors = vectors.to(self.device)
        channels = self._features(reference.pair(0)[0]).shape[1]
        torch.manual_seed(seed)
        self.head = Explainer(channels, vectors.shape[1], layer=layer).to(self.device)
        self.optimizer = torch.optim.Adam(self.head.parameters(), lr=lr)

    def _features(self, image: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), LayerFeatures(self.model, [self.layer]) as tap:
            return tap(image[None].to(self.device))[self.layer]

    def step(self, pair: int) -> float:
        """One optimisation step on (image, object) pair ``pair``; returns its loss."""
        image, mask, label = self.reference.pair(pair)
        features = self._features(image)  # [1, C, h, w]
        mask = F.interpolate(mask[None, None].float(), size=features.shape[-2:], mode="nearest").to(self.device)
        pooled = (features * mask).mean((2, 3))  # the avgpool after the masked layer
        embedding = self.head(pooled)
        target = torch.tensor([self.index[label]], device=self.device)
        loss = csmr_loss(embedding, target, self.vectors)
        with torch.no_grad():  # the official running accuracy: the words ranked by cosine similarity
            sims = F.normalize(embedding, dim=1) @ F.normalize(self.vectors, dim=1).t()
            torch.argsort(sims, dim=1, descending=True)[:, :5]
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def epoch(self, pairs: Sequence[int]) -> float:
        """One epoch over ``pairs`` (in the given order); returns the mean loss."""
        self.head.train()
        self.head.apply(_set_bn_eval)
        total = 0.0
        for pair in pairs:
            total += self.step(pair)
        return total / max(1, len(pairs))
