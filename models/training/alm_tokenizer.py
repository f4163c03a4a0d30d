"""Training recipe of ALMTokenizer (models/alm_tokenizer.py), in two stages.

Stage 1 (`stage: 1`): patchify and unpatchify as an autoencoder (mel L1), with an MAE encoder and
decoder that predict the masked patch frames from the rest (MSE on the masked frames, against the
layer-normalized frames); the MAE pair is discarded.

Stage 2 (`stage: 2`, `init_from` the stage-1 export, `init_modules: [patchify, unpatchify]`,
`freeze: [patchify]`): everything else, with

    L = lambda_recon L1(mel) + lambda_commit (commitment [+ codebook loss when learnable])
        + lambda_mae MSE(masked frames) + lambda_ar MSE(layer 3 | layers 1-2)
        + lambda_semantic MSE(query vectors, standardized semantic features of their spans)

the window w drawn per step from the config's windows. The semantic prior: before building, k-means
of the corpus's semantic features (pooled to the default window's query rate, standardized, on the VQ
space's sphere when the codec is spherical) gives
layer 1's codewords, k-means of what layer 1 leaves gives layer 2's, and so on; cached under the
corpus cache. Learnable codebooks (the ablations) replace codewords unused for a while by current
residuals, so no code stays dead.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from models import audio
from models.alm_tokenizer import ALMTokenizer, ALMTokenizerConfig, to_sphere
from models.data.dataset import SpeechDataset, Stream
from models.data.manifest import resolve_audio
from models.files import atomic_path, write_text_atomic
from models.modules import Transformer, sequence_mask
from models.semantic_tokenizer import pool
from models.training import Scorers, SignalScores, Task, task, unwrap
from models.training.quantization import perplexity, residual_kmeans, residual_usage
from models.training.semantic import semantic_feature
from models.vocoder import get_vocoder

PRIOR_UTTERANCES = 1500
PRIOR_CHECK_UTTERANCES = 300  # validation utterances the prior's usage is measured on
DEAD_CODE_USAGE = 1e-2  # learnable codebooks: a codeword used less than this (EMA share) is replaced


class ALMTraining(ALMTokenizer):
    """The codec plus what only training needs: the MAE encoder (stage 1), the MAE decoder, the AR
    predictor, and codeword usage for dead-code replacement. Parameter names match the codec's, so
    stage 2 copies stage 1's patchify and unpatchify by name; only the codec is exported."""

    def __init__(self, config: ALMTokenizerConfig):
        super().__init__(config)
        c = config
        self.mae_encoder = Transformer(c.dim, c.mae_layers, c.heads, causal=False) if c.stage == 1 else None
        self.mae_decoder = Transformer(c.dim, c.mae_layers, c.heads, causal=False)
        self.mae_head = nn.Linear(c.dim, c.dim)
        self.ar_in = nn.Linear(c.vq_dim, c.dim)
        self.ar = Transformer(c.dim, c.ar_layers, c.heads, causal=True)
        self.ar_out = nn.Linear(c.dim, c.vq_dim)
        self.register_buffer("usage", torch.full((c.codebooks, c.codebook_size), 1.0 / c.codebook_size))

    def mae_mask(self, valid: torch.Tensor) -> torch.Tensor:
        """(batch, T) True on the real frames to zero: a share drawn per sequence from mask_rate."""
        low, high = self.config.mask_rate
        rate = low + (high - low) * torch.rand(valid.shape[0], 1, device=valid.device)
        return (torch.rand(valid.shape, device=valid.device) < rate) & valid

    def mae_loss(self, hidden: torch.Tensor, frames: torch.Tensor, valid: torch.Tensor,
                 dropped: torch.Tensor) -> torch.Tensor:
        """MSE between the MAE decoder's prediction and the layer-normalized frames, on dropped frames."""
        prediction = self.mae_head(self.mae_decoder(hidden, mask=valid))
        target = F.layer_norm(frames, frames.shape[-1:])
        error = (prediction - target).pow(2).mean(-1)
        return (error * dropped).sum() / dropped.sum().clamp_min(1)

    def ar_loss(self, z: torch.Tensor, layers: torch.Tensor, query_valid: torch.Tensor) -> torch.Tensor:
        """A causal transformer reads layers 1..L-1's quantized vectors and predicts layer L's; the
        straight-through vectors carry the loss's gradient to the encoder."""
        residual, through = z, []
        for i in range(layers.shape[2]):
            through.append(residual + (layers[:, :, i] - residual).detach())
            residual = residual - layers[:, :, i].detach()
        prediction = self.ar_out(self.ar(self.ar_in(sum(through[:-1]))))
        error = (prediction - through[-1]).pow(2).mean(-1)
        return (error * query_valid).sum() / query_valid.sum().clamp_min(1)

    @torch.no_grad()
    def replace_dead_codes(self, z: torch.Tensor, ids: torch.Tensor, query_valid: torch.Tensor) -> int:
        """Learnable codebooks: track each codeword's usage (EMA) and re-seed unused ones with residuals
        of this batch. Returns how many were replaced."""
        residuals = z[query_valid].to(self.rvq.codebooks.dtype)  # (n, vq_dim); z is bf16 under autocast
        chosen = ids[query_valid]  # (n, layers)
        replaced = 0
        for layer, codebook in enumerate(self.rvq.codebooks):
            counts = torch.bincount(chosen[:, layer], minlength=codebook.shape[0]).float()
            self.usage[layer].mul_(0.99).add_(0.01 * counts / counts.sum().clamp_min(1))
            dead = (self.usage[layer] < DEAD_CODE_USAGE / codebook.shape[0]).nonzero()[:, 0]
            if len(dead) and len(residuals):
                pick = torch.randint(0, len(residuals), (len(dead),), device=z.device)
                codebook.data[dead] = residuals[pick]
                self.usage[layer, dead] = 1.0 / codebook.shape[0]
                replaced += len(dead)
            residuals = residuals - codebook[chosen[:, layer]]
        return replaced


@task("alm_tokenizer")
class ALMTokenizerTask(Task):
    def __init__(self, model_config: dict):
        super().__init__(model_config)
        self.config = ALMTokenizerConfig.from_dict(model_config)
        self.prior: torch.Tensor | None = None

    def streams(self) -> dict[str, Stream]:
        """Stage 2 with a semantic loss: the semantic features of the same span of time as each mel crop."""
        c = self.config
        if c.stage == 2 and c.semantic_encoder and c.lambda_semantic > 0:
            return {"semantic": Stream(semantic_feature(c.semantic_encoder))}
        return {}

    def prepare(self, train_set: SpeechDataset) -> None:
        c = self.config
        if c.stage == 2 and c.semantic_encoder:
            prior = self.semantic_prior(train_set)
            self.prior, self.semantic_mean, self.semantic_std = prior["codebooks"], prior["mean"], prior["std"]

    def semantic_prior(self, train_set: SpeechDataset) -> dict[str, torch.Tensor]:
        """Residual k-means of standardized semantic features at the default window's query rate, with the
        standardization's mean and std (cached: a resumed run, or another with the same settings, reads
        the same codewords)."""
        c = self.config
        rate = c.patch_rate / c.window
        key = (f"v4|{c.spherical}|{c.semantic_encoder}|{rate:.4f}|{c.codebooks}x{c.codebook_size}|"
               f"{PRIOR_UTTERANCES}|{len(train_set)}")
        cached = (Path(train_set.cache) if train_set.cache else Path(train_set.manifest).parent / "cache") / \
            "alm_prior" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"
        feature = semantic_feature(c.semantic_encoder)

        def space(rows: list[dict]) -> torch.Tensor:
            return torch.cat([pool(train_set.features(row, feature).T, feature.frames_per_second, rate)
                              for row in rows])

        if cached.is_file():
            prior = load_file(str(cached))
        else:
            rows = list(train_set.rows)
            random.Random(0).shuffle(rows)
            x = space(rows[:PRIOR_UTTERANCES])
            mean, std = x.mean(0), x.std(0).clamp_min(1e-5)
            x = self.to_space((x - mean) / std)
            if x.shape[1] != c.vq_dim:
                raise ValueError(f"vq_dim {c.vq_dim} must equal the semantic features' dimension {x.shape[1]}")
            prior = {"codebooks": residual_kmeans(x, c.codebooks, c.codebook_size, seed=0), "mean": mean, "std": std}
            with atomic_path(cached) as tmp:
                save_file({k: v.contiguous() for k, v in prior.items()}, str(tmp))
        usage = cached.with_suffix(".json")  # how the prior quantizes the true features of unseen utterances
        if not usage.is_file():
            valid = SpeechDataset(train_set.manifest, ("valid",), feature=feature, cache_dir=train_set.cache,
                                  max_seconds=None).rows[:PRIOR_CHECK_UTTERANCES]
            if valid:
                x = self.to_space((space(valid) - prior["mean"]) / prior["std"])
                write_text_atomic(usage, json.dumps({"utterances": len(valid), "queries": len(x),
                                                     "layers": residual_usage(x, prior["codebooks"])}, indent=1))
        if usage.is_file():
            print(f"semantic prior on validation features: {usage.read_text()}", file=sys.stderr)
        return prior

    def to_space(self, standardized: torch.Tensor) -> torch.Tensor:
        """Standardized semantic features -> the VQ space (its sphere, when the codec is spherical)."""
        return to_sphere(standardized) if self.config.spherical else standardized

    def semantic_targets(self, batch: dict, window: int, queries: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The standardized semantic features (the batch's aligned `semantic` stream) averaged over each
        query's span of each cropped item, in the VQ space: (batch, N, vq_dim) targets and a (batch, N) mask
        of the spans the features cover."""
        c = self.config
        mel_rate, rate = c.patch_rate * c.downsample, semantic_feature(c.semantic_encoder).frames_per_second
        count = len(batch["ids"])
        starts = batch.get("crop_starts", torch.zeros(count, dtype=torch.long)).tolist()
        offsets = batch.get("semantic_starts", torch.zeros(count, dtype=torch.long)).tolist()
        targets = torch.zeros(count, queries, c.vq_dim)
        covered = torch.zeros(count, queries, dtype=torch.bool)
        span = window * c.downsample
        for i, (start, offset, length) in enumerate(zip(starts, offsets, batch["semantic_lengths"].tolist())):
            features = (batch["semantic"][i, :, :length].T.float().cpu() - self.semantic_mean) / self.semantic_std
            for k in range(queries):  # the query's span in the utterance's semantic frames, then in the crop's
                a = max(0, int((start + k * span) / mel_rate * rate) - offset)  # rounding can differ by one
                b = max(a + 1, int((start + (k + 1) * span) / mel_rate * rate) - offset)
                if a < len(features):
                    targets[i, k], covered[i, k] = features[a:b].mean(0), True
        targets = self.to_space(targets)
        device = batch["features"].device
        return targets.to(device), covered.to(device)

    def build(self) -> ALMTraining:
        model = ALMTraining(self.config)
        if self.prior is not None:
            model.rvq.codebooks.data.copy_(self.prior)
        return model

    def exported(self, model: nn.Module) -> ALMTokenizer:
        codec = ALMTokenizer(self.config)
        codec.load_state_dict({k: v for k, v in model.state_dict().items() if k in codec.state_dict()})
        return codec.to(next(model.parameters()).device)

    def window(self, step: int) -> int:
        return random.Random(step).choice(self.config.windows)

    def losses(self, model: nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict, None]:
        c = self.config
        core = unwrap(model)
        mel, lengths = batch["features"], batch["feature_lengths"]
        mask = sequence_mask(lengths, mel.shape[-1]).unsqueeze(1).to(mel.dtype)
        window = self.window(step) if model.training else c.window

        def recon_loss(mel_hat: torch.Tensor) -> torch.Tensor:
            return ((mel_hat[..., : mel.shape[-1]] - mel).abs() * mask).sum() / (mask.sum() * mel.shape[1])

        if c.stage == 1:
            padded = core.pad_mel(mel, window)
            e = core.patchify(padded).transpose(1, 2)
            valid = core.frame_mask(lengths, e.shape[1])
            dropped = core.mae_mask(valid)
            hidden = core.mae_encoder(e.masked_fill(dropped[..., None], 0.0), mask=valid)
            recon = recon_loss(core.unpatchify(e.transpose(1, 2)))
            mae = core.mae_loss(hidden, e, valid, dropped)
            loss = c.lambda_recon * recon + c.lambda_mae * mae
            return loss, {"recon": recon.item(), "mae": mae.item()}, None

        padded = core.pad_mel(mel, window)
        valid = core.frame_mask(lengths, padded.shape[-1] // c.downsample)
        dropped = core.mae_mask(valid) if c.lambda_mae > 0 and model.training else None
        out = model(mel, lengths, window, dropped)
        vq = out["vq"]
        recon = recon_loss(out["mel_hat"])
        loss = c.lambda_recon * recon + c.lambda_commit * (vq["commit"] + vq["codebook"])
        logs = {"recon": recon.item(), "commit": vq["commit"].item(), "window": float(window)}
        if dropped is not None:
            mae = core.mae_loss(out["frame_outputs"], out["frames"].detach(), out["valid"], dropped)
            loss = loss + c.lambda_mae * mae
            logs["mae"] = mae.item()
        if c.lambda_ar > 0 or not model.training:  # validation reports how predictable layer 3 is either way
            ar = core.ar_loss(out["z"], vq["layers"], out["query_valid"])
            loss = loss + c.lambda_ar * ar
            logs["ar"] = ar.item()
        if c.semantic_encoder and c.lambda_semantic > 0:
            targets, covered = self.semantic_targets(batch, window, out["z"].shape[1])
            covered = covered & out["query_valid"]
            error = (out["z"].float() - targets).pow(2).mean(-1)
            semantic = (error * covered).sum() / covered.sum().clamp_min(1)
            loss = loss + c.lambda_semantic * semantic
            logs["semantic"] = semantic.item()
        ids = vq["ids"][out["query_valid"]]
        for layer in range(c.codebooks):
            logs[f"perplexity_{layer + 1}"] = perplexity(ids[:, layer], c.codebook_size)
        if c.learnable_codebooks and model.training:
            logs["replaced"] = float(core.replace_dead_codes(out["z"].detach(), vq["ids"], out["query_valid"]))
        return loss, logs, None

    def validate(self, model: nn.Module, items: list[dict], out_dir: Path, scorers: Scorers) -> dict:
        """Reconstruct validation utterances at each window (stage 2) or through the autoencoder
        (stage 1), with PESQ-wb and STOI when the harness hands in signal scorers."""
        scores = SignalScores(out_dir, scorers)
        windows = self.config.windows if self.config.stage == 2 else (None,)
        for item in items:
            wav = audio.load_audio(resolve_audio(item["manifest"], item["path"]), audio.SAMPLE_RATE, max_seconds=None)
            for window in windows:
                if window is None:
                    mel = audio.mel_spectrogram(wav).to(next(model.parameters()).device)
                    with torch.no_grad():
                        mel_hat = model.unpatchify(model.patchify(model.pad_mel(mel[None], 1)))[0]
                    out = get_vocoder(str(mel_hat.device)).synthesize(mel_hat).cpu().numpy()
                else:
                    out = model.decode_tokens(model.encode_wav(wav, window), window)
                scores.add(item["id"], wav, out[: len(wav)], "" if window is None else f"_w{window}")
        return scores.means()
