"""Latent statistics: how a system's codec latents are distributed, real against generated.

Per utterance, the `latent` metric encodes the system's audio with a codec (see
models.pipelines.encode_latents) and stores the frames under
`<run>/latents/<codec>/<system>/<utt>.npz` (arrays `mean`, and `std` for a variational
codec; for a token codec, `tokens` and as `mean` their summed codewords). Across a run,
`latent_statistics` gives per-dimension means and variances per system, the energy distance and
Fréchet distance of each system's frames to the reference system's, and for a token codec each
layer's codebook usage and perplexity; `latent_figures` the plotly views: per-dimension
distributions, codebook perplexity per layer, and a 2-D projection (PCA, and UMAP when installed)
of utterance means by speaker and system.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import scipy.linalg
import torch
from plotly.colors import qualitative

from evaluation.metrics.base import MetricError, Sample, metric
from models import audio, pipelines, registry
from models.files import atomic_path
from models.roles import TOKEN_CODEC

PALETTE = qualitative.Alphabet
SYMBOLS = ["circle", "square", "diamond", "cross", "x", "triangle-up", "triangle-down", "star"]
DISTANCE_FRAMES = 2000  # frames sampled per system for the energy distance (O(n^2) memory)


def codec_folder(codec: str) -> str:
    """The folder of a codec's latents in a run: a checkpoint path becomes one name."""
    return codec.strip("/").replace("/", "_")


class LatentScorer:
    def __init__(self, codec: str, device: str, out_dir: Path):
        self.codec, self.device = codec, device
        self.out_dir = Path(out_dir) / codec_folder(codec)  # the report reads <codec>/<system>/
        self.info = {"latent_codec": codec}
        self.discrete = registry.checkpoint_role(codec) == TOKEN_CODEC

    def __call__(self, sample: Sample) -> dict[str, float]:
        wav, tokens, std = sample.audio(sr=audio.SAMPLE_RATE), None, None
        try:
            if self.discrete:
                tokens, mean = pipelines.encode_tokens(wav, audio.SAMPLE_RATE, self.codec, self.device,
                                                       max_seconds=None)
            else:
                mean, std = pipelines.encode_latents(wav, audio.SAMPLE_RATE, self.codec, self.device,
                                                     max_seconds=None)
        except audio.AudioError as error:
            raise MetricError(str(error)) from None
        arrays = {"mean": mean.astype(np.float16)}
        if std is not None:
            arrays["std"] = std.astype(np.float16)
        if tokens is not None:
            arrays["tokens"] = tokens.astype(np.int32)
        with atomic_path(self.out_dir / (sample.system or "system") / f"{sample.key}.npz") as tmp:
            np.savez(tmp, **arrays)
        values = {"latent_frames": float(len(mean)), "latent_mean": float(mean.mean()),
                  "latent_std": float(mean.std(0).mean())}
        if std is not None:
            values["posterior_std"] = float(std.mean())
        return values

    def close(self) -> None:
        pass


@metric("latent", ("latent_frames", "latent_mean", "latent_std", "posterior_std"), needs=(),
        higher_is_better={},  # descriptive: compared through the distribution distances
        description="codec latents of the output, stored for distribution statistics and plots")
def _latent(device: str, options: dict) -> LatentScorer:
    return LatentScorer(options.get("latent_codec") or "vocoder", device, options["latent_dir"])


def load_latents(run_latents: str | os.PathLike, codec: str) -> dict[str, dict[str, dict]]:
    """{system: {utt: {"mean": (T, D), "std": (T, D) | None}}} of one codec (a name, path or its
    folder's name) from a run's latent folder."""
    root = Path(run_latents) / codec_folder(codec)
    systems: dict[str, dict[str, dict]] = {}
    for folder in sorted(p for p in root.glob("*") if p.is_dir()):
        for path in sorted(folder.glob("*.npz")):
            with np.load(path, allow_pickle=False) as data:
                systems.setdefault(folder.name, {})[path.stem] = {
                    "mean": data["mean"].astype(np.float32),
                    "std": data["std"].astype(np.float32) if "std" in data.files else None,
                    "tokens": data["tokens"].astype(np.int64) if "tokens" in data.files else None}
    return systems


def sample_energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """2 E|X-Y| - E|X-X'| - E|Y-Y'| (Szekely & Rizzo): 0 iff the distributions are equal."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """|mu_x - mu_y|^2 + Tr(S_x + S_y - 2 (S_x S_y)^1/2) between Gaussian fits (as in FID / FAD)."""
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    root = scipy.linalg.sqrtm(cov_x @ cov_y)
    root = root.real if np.iscomplexobj(root) else root
    return float(np.sum((mu_x - mu_y) ** 2) + np.trace(cov_x + cov_y - 2 * root))


def _frames(utterances: dict[str, dict], key: str = "mean") -> np.ndarray:
    return np.concatenate([u[key] for u in utterances.values() if u[key] is not None and len(u[key])])


def latent_statistics(systems: dict[str, dict[str, dict]], reference: str | None = None, seed: int = 0) -> dict:
    """Per-system per-dimension statistics, and distances of every system to `reference`.

    The reference defaults to "gt" when present (real speech), else the first system.
    """
    if not systems:
        raise ValueError("no latents to summarize")
    reference = reference or ("gt" if "gt" in systems else next(iter(systems)))
    if reference not in systems:
        raise ValueError(f"reference system {reference!r} has no latents")
    rng = np.random.default_rng(seed)

    def subsample(frames: np.ndarray) -> np.ndarray:
        if len(frames) <= DISTANCE_FRAMES:
            return frames
        return frames[rng.choice(len(frames), DISTANCE_FRAMES, replace=False)]

    real = _frames(systems[reference])
    real_sample = subsample(real)
    result = {"reference": reference, "seed": seed, "systems": {}}
    for name, utterances in systems.items():
        frames = _frames(utterances)
        entry = {"utterances": len(utterances), "frames": int(len(frames)), "dims": int(frames.shape[1]),
                 "dim_mean": frames.mean(0).tolist(), "dim_var": frames.var(0).tolist()}
        if all(u["std"] is not None for u in utterances.values()):
            entry["posterior_var"] = (_frames(utterances, "std") ** 2).mean(0).tolist()
        if all(u.get("tokens") is not None for u in utterances.values()):
            entry["codebooks"] = codebook_statistics([u["tokens"] for u in utterances.values()])
        if name != reference:
            entry["energy_distance"] = sample_energy_distance(subsample(frames), real_sample)
            entry["frechet_distance"] = frechet_distance(frames, real)
        result["systems"][name] = entry
    return result


def codebook_statistics(tokens: list[np.ndarray]) -> list[dict]:
    """Per layer of (layers, frames) token arrays: codewords used at least once, and the perplexity
    exp(entropy) of their distribution, the number of codewords in effective use."""
    stacked = np.concatenate(tokens, axis=1)
    out = []
    for layer, ids in enumerate(stacked, start=1):
        counts = np.bincount(ids)
        p = counts[counts > 0] / counts.sum()
        perplexity = float(np.exp(-(p * np.log(p)).sum()))
        out.append({"layer": layer, "used": int((counts > 0).sum()), "perplexity": perplexity})
    return out


def project_2d(points: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Rows -> 2-D. PCA by SVD of the centered data; UMAP needs the umap-learn package."""
    if method == "umap":
        import umap  # optional; callers check availability first

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(points)
    centered = points - points.mean(0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return centered @ vt[:2].T


def umap_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def latent_figures(systems: dict[str, dict[str, dict]], stats: dict, speakers: dict[str, str] | None = None,
                   seed: int = 0) -> list[go.Figure]:
    """Per-dimension mean and variance histograms per system, and 2-D projections of utterance means."""
    figures = []
    for field, title in (("dim_mean", "per-dimension mean"), ("dim_var", "per-dimension variance"),
                         ("posterior_var", "per-dimension posterior variance")):
        fig = go.Figure()
        for name, entry in stats["systems"].items():
            if field in entry:
                fig.add_trace(go.Histogram(x=entry[field], name=name, opacity=0.6, nbinsx=40))
        if fig.data:
            dims = stats["systems"][stats["reference"]]["dims"]
            fig.update_layout(barmode="overlay", title=f"Latent {title} ({dims} dims)",
                              xaxis_title=title, yaxis_title="dimensions")
            figures.append(fig)
    fig = go.Figure()
    for name, entry in stats["systems"].items():
        if "codebooks" in entry:
            layers = entry["codebooks"]
            fig.add_trace(go.Bar(x=[f"layer {c['layer']}" for c in layers], y=[c["perplexity"] for c in layers],
                                 name=name, text=[f"{c['used']} used" for c in layers]))
    if fig.data:
        fig.update_layout(barmode="group", title="Codebook perplexity per layer (codewords in effective use)",
                          yaxis_title="perplexity")
        figures.append(fig)
    labels, means = [], []
    for name, utterances in systems.items():
        for key, u in utterances.items():
            labels.append((name, (speakers or {}).get(key, "?"), key))
            means.append(u["mean"].mean(0))
    if len(means) >= 3:
        points = np.stack(means)
        methods = ["pca"] + (["umap"] if umap_available() and len(means) >= 10 else [])
        for method in methods:
            xy = project_2d(points, method, seed)
            for colour_by, index in (("system", 0), ("speaker", 1)):
                fig = go.Figure()
                for k, value in enumerate(sorted({label[index] for label in labels})):
                    rows = [i for i, label in enumerate(labels) if label[index] == value]
                    # 26 colours, then a new marker shape: no two of up to 208 groups look alike
                    fig.add_trace(go.Scatter(x=xy[rows, 0], y=xy[rows, 1], mode="markers", name=value,
                                             text=[" / ".join(labels[i]) for i in rows],
                                             marker={"size": 6, "opacity": 0.7, "color": PALETTE[k % len(PALETTE)],
                                                     "symbol": SYMBOLS[k // len(PALETTE) % len(SYMBOLS)]}))
                fig.update_layout(title=f"Utterance-mean latents, {method.upper()}, coloured by {colour_by}")
                figures.append(fig)
    return figures
