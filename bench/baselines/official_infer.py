"""The official LaViSE inference, re-implemented for measurement only.

github.com/YuYang0901/LaViSE (MIT), ``infer_filter.py``: one filter per run, batch size 1.
For filter ``f`` it

1. runs the CNN on every image of the target set, one image at a time, up to the layer, copies
   the feature map to the host and keeps the image's spatial maximum of ``f``;
2. sorts the images by that maximum (``np.argsort``) and takes the top P;
3. runs the CNN again on each of those P images, one at a time; the weight is the image's
   maximum of ``f`` and an image with weight <= 0 is skipped; the feature map is on the host,
   the filter's map is resized to the image size (``cv2.resize``, bilinear; here
   ``F.interpolate``, the same interpolation: only the ``image`` method reads it, the official
   code makes it for every method), and the filter attention vector
   ``z = mean_hw(A * a_f / ||a_f||_2)`` is computed in NumPy and sent to the device;
4. sends z through the head, takes the cosine similarity against ALL the words
   (``mm(z, E) / mm(|z|, |E|)``, the word norms recomputed per image) and sorts the whole row
   (``torch.sort``);
5. repeats the s best word indices ``int(weight)`` times (``np.repeat``) and, after the P
   images, counts them (``np.unique``) and keeps the ``num_words`` most frequent.

The official code never computes the thresholds it loads (``np.load(args.thresh_path)``); the
usual way (Network Dissection) is to store every activation of every filter over all images and
take a percentile per filter: :func:`thresholds_store_everything`.

Differences that only make this baseline faster than the original: the CNN stops right after
the layer (a forward hook; the original also stops there, by walking ``model._modules``), no
image is decoded (the images are in memory, on the device), and the vocabulary is whatever is
passed (the original sorts all 400,000 GloVe words per image). Two bugs of the original are not
reproduced: it indexes the maxima ``[f]`` instead of ``[0, f]`` and sorts a 1-D array along
axis 1; both would crash. The head is the same ``lavise_fast.Explainer`` as lavise_fast's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lavise_fast.layers import LayerFeatures

__all__ = ["BatchedImages", "FilterExplanation", "OfficialInference", "thresholds_store_everything"]


class BatchedImages(torch.utils.data.Dataset):
    """A map-style dataset of single images [3, H, W] over a list of image batches [n, 3, H, W]
    (as made by ``e2e_common.premade_batches``), a 4-D tensor, or a dataset whose items are an
    image or a tuple starting with one."""

    def __init__(self, images: Sequence[torch.Tensor] | torch.Tensor | torch.utils.data.Dataset) -> None:
        if torch.is_tensor(images):
            if images.dim() != 4:
                raise ValueError(f"images must be a 4-D tensor [N, 3, H, W], got {images.dim()}-D")
            images = [images]
        if isinstance(images, (list, tuple)):
            if not all(torch.is_tensor(b) and b.dim() == 4 for b in images):
                raise TypeError("images must be a list of 4-D image batches [n, 3, H, W]")
            self.batches, self.dataset = list(images), None
            sizes = torch.tensor([0] + [b.shape[0] for b in self.batches])
            self.starts = torch.cumsum(sizes, 0)
            self.length = int(self.starts[-1])
        else:
            self.batches, self.dataset, self.length = None, images, len(images)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.length:
            raise IndexError(f"image index {index} out of range [0, {self.length})")
        if self.dataset is not None:
            item = self.dataset[index]
            return item[0] if isinstance(item, (tuple, list)) else item
        batch = int(torch.searchsorted(self.starts, torch.tensor(index), right=True)) - 1
        return self.batches[batch][index - int(self.starts[batch])]


@dataclass
class FilterExplanation:
    """What the official loop gives for one filter: ``words`` (vocabulary indices, most votes first)
    with their ``votes`` (counts of the ``int(weight)``-fold repeated indices), the ``top_images``
    (positions in the target set) with their maxima ``top_activations`` (descending), and the
    seconds spent in the max-activation pass (``max_pass_s``) and on the top images (``top_s``)."""

    filter: int
    words: list[int]
    votes: list[int]
    top_images: list[int]
    top_activations: list[float]
    max_pass_s: float
    top_s: float

    @property
    def seconds(self) -> float:
        return self.max_pass_s + self.top_s


class OfficialInference:
    """The official per-filter inference loop at batch size 1 (module docstring).

    ``model`` is the frozen CNN, ``layer`` the dotted name of the layer, ``explainer`` the head
    (pooled vectors [M, C] -> embeddings [M, D]) and ``vocabulary_vectors`` [V, D] the words.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        explainer: nn.Module,
        vocabulary_vectors: torch.Tensor,
        *,
        device: torch.device | str | None = None,
    ) -> None:
        if vocabulary_vectors.dim() != 2:
            raise ValueError(f"vocabulary_vectors must be [V, D], got shape {tuple(vocabulary_vectors.shape)}")
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.layer = layer
        self.head = explainer.to(self.device).eval()
        self.embeddings = vocabulary_vectors.float().t().to(self.device)  # [D, V], like ``vectors.T.cuda()``

    def _loader(self, dataset: torch.utils.data.Dataset) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False, num_workers=0)

    def _activation(self, image: torch.Tensor) -> np.ndarray:
        """The layer's feature map of one image [1, C, h, w], on the host, as NumPy."""
        with LayerFeatures(self.model, [self.layer]) as tap:
            x = tap(image.to(self.device))[self.layer]
        return x.detach().cpu().numpy()

    @torch.no_grad()
    def max_activations(self, dataset: torch.utils.data.Dataset, f: int) -> np.ndarray:
        """Pass 1: the spatial maximum of filter ``f`` for every image, one image at a time [N]."""
        maxima = np.zeros(len(dataset))
        for k, batch in enumerate(self._loader(dataset)):
            activation = self._activation(batch)
            maxima[k] = np.max(activation, axis=(-1, -2))[0, f]
        return maxima

    @torch.no_grad()
    def explain_filter(
        self,
        images: Sequence[torch.Tensor] | torch.Tensor | torch.utils.data.Dataset,
        f: int,
        P: int = 25,
        s: int = 5,
        num_words: int = 10,
    ) -> FilterExplanation:
        """Explains filter ``f`` over ``images`` (batches, a tensor or a dataset; see
        :class:`BatchedImages`) the official way: P top images, s words per image."""
        for name, value in (("P", P), ("s", s), ("num_words", num_words)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        dataset = images if isinstance(images, BatchedImages) else BatchedImages(images)
        if len(dataset) == 0:
            raise ValueError("images must hold at least one image")

        start = time.perf_counter()
        maxima = self.max_activations(dataset, f)
        self._sync()
        max_pass_s = time.perf_counter() - start

        start = time.perf_counter()
        sorted_samples = np.argsort(-maxima)
        top = sorted_samples[:P]
        filter_dataset = torch.utils.data.Subset(dataset, top.tolist())
        filter_rank = None
        top_activations = []
        for batch in self._loader(filter_dataset):
            data = batch.to(self.device)
            activation = self._activation(data)
            c = activation[:, f, :, :]
            h, w = c.shape[-2:]
            c = c.reshape(h, w)
            _xf = F.interpolate(torch.from_numpy(c)[None, None], size=tuple(data.shape[-2:]), mode="bilinear",
                                align_corners=False)  # cv2.resize(c, (224, 224)): read by method "image" only
            weight = np.amax(c)
            top_activations.append(float(weight))
            if weight <= 0.0:
                continue
            filter_embed = torch.tensor(np.mean(activation * c / (np.sum(c**2, axis=(0, 1)) ** 0.5), axis=(2, 3)))
            predict = self.head(filter_embed.to(self.device))
            E = self.embeddings
            predict_score = torch.mm(predict, E) / torch.mm(
                torch.sqrt(torch.sum(predict**2, dim=1, keepdim=True)), torch.sqrt(torch.sum(E**2, dim=0, keepdim=True))
            )
            _, sorted_predict = torch.sort(predict_score, dim=1, descending=True)
            sorted_predict = sorted_predict[0, :].detach().cpu().numpy()
            select_rank = np.repeat(sorted_predict[:s], int(weight))
            filter_rank = select_rank if filter_rank is None else np.concatenate((filter_rank, select_rank))
        words, votes = [], []
        if filter_rank is not None and filter_rank.size:
            values, counts = np.unique(filter_rank, return_counts=True)
            order = np.argsort(-counts)[:num_words]
            words, votes = values[order].tolist(), counts[order].tolist()
        self._sync()
        top_s = time.perf_counter() - start
        return FilterExplanation(f, words, votes, top.tolist(), top_activations, max_pass_s, top_s)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def thresholds_store_everything(features: Iterable[torch.Tensor], q: float = 99.5,
                                backend: str = "numpy") -> np.ndarray:
    """Per-filter ``q``-th percentile of every activation, by storing them all.

    Every feature batch [n, C, h, w] is kept (on the host), the batches are concatenated into
    [N, C, h, w] and each filter's N*h*w values get ``np.percentile(values, q)`` (``backend=
    "numpy"``) or ``torch.quantile(values, q / 100)`` (``backend="torch"``), both with linear
    interpolation. Memory grows with N: the stored activations, then their concatenation.
    Returns the thresholds [C] (float64 for numpy, float32 for torch, as NumPy).
    """
    if backend not in ("numpy", "torch"):
        raise ValueError(f"backend must be 'numpy' or 'torch', got {backend!r}")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be a percentile in [0, 100], got {q}")
    stored = []
    for batch in features:
        if batch.dim() != 4:
            raise ValueError(f"feature batches must be [n, C, h, w], got shape {tuple(batch.shape)}")
        stored.append(batch.detach().cpu().numpy() if backend == "numpy" else batch.detach().cpu())
    if not stored:
        raise ValueError("features yielded no batch")
    if backend == "numpy":
        everything = np.concatenate(stored)
        del stored
        return np.array([np.percentile(everything[:, c], q) for c in range(everything.shape[1])])
    everything = torch.cat(stored)
    del stored
    return torch.stack([torch.quantile(everything[:, c].flatten(), q / 100.0) for c in range(everything.shape[1])]
                       ).numpy()
