"""Residual k-means and codebook statistics, shared by the recipes of quantized codecs (ALMTokenizer's
semantic prior, the latent RVQ's initial codebooks)."""

from __future__ import annotations

import numpy as np
import torch


def perplexity(ids: torch.Tensor, size: int) -> float:
    """exp(entropy) of the codeword distribution in `ids`: how many codewords are in effective use."""
    p = torch.bincount(ids.reshape(-1), minlength=size).float()
    p = p[p > 0] / p.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def residual_kmeans(x: torch.Tensor, layers: int, size: int, seed: int) -> torch.Tensor:
    """(n, dim) -> (layers, size, dim): k-means of x, then of what each layer's centroids leave.

    Full-batch Lloyd iterations: on the near-isotropic residuals after layer 1, mini-batch k-means left
    most centroids where k-means++ put them (on data points), so few were ever nearest
    (docs/alm_tokenizer.md)."""
    from sklearn.cluster import KMeans

    residual, codebooks = x.numpy(), []
    for layer in range(layers):
        kmeans = KMeans(n_clusters=size, n_init=1, max_iter=50, random_state=seed + layer)
        labels = kmeans.fit_predict(residual)
        codebooks.append(kmeans.cluster_centers_.astype(np.float32))
        residual = residual - kmeans.cluster_centers_[labels]
    return torch.from_numpy(np.stack(codebooks))


def residual_usage(x: torch.Tensor, codebooks: torch.Tensor) -> list[dict]:
    """How residual codebooks (layers, size, dim) quantize x (n, dim): per layer, the perplexity and
    number of codewords used, and the share of x's energy left after it (1.0: the layer removed nothing)."""
    residual, energy, out = x.float(), x.float().pow(2).sum(), []
    for codebook in codebooks.float():
        ids = torch.cdist(residual, codebook).argmin(-1)
        residual = residual - codebook[ids]
        out.append({"perplexity": round(perplexity(ids, len(codebook)), 1), "used": int(ids.unique().numel()),
                    "energy_left": round(float(residual.pow(2).sum() / energy), 4)})
    return out
