"""Training recipe of the Flow-VAE (models/flow_vae.py): mel L1 + KL on random crops, a training-time
frequency warp, and with the waveform head LSGAN + feature matching; or, with a `quantizer`, the decoder
alone on a latent RVQ's quantized latents at a random depth per crop (quantizer dropout). Validation
reconstructs utterances (through the quantizer at its lowest and highest depth, when there is one) and
scores them with the signal scorers the harness hands in."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models import audio, registry
from models.data.manifest import resolve_audio
from models.flow_vae import FlowVAE, FlowVAEConfig
from models.modules import (
    MultiDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    sequence_mask,
)
from models.training import Scorers, SignalScores, Task, step_generator, task, unwrap


def warp_frequencies(mel: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Stretch each (80, frames) log-mel of a batch along frequency: output bin f reads input bin f / factor.

    A factor above 1 moves formants up (a shorter vocal tract); bins read past the top repeat the top bin.
    """
    bins = mel.shape[1]
    source = (torch.arange(bins, device=mel.device, dtype=torch.float32)[None] / factors[:, None]).clamp(0, bins - 1)
    low = source.floor().long()
    high = (low + 1).clamp(max=bins - 1)
    weight = (source - low).unsqueeze(-1).to(mel.dtype)
    frames = mel.shape[-1]
    below = mel.gather(1, low.unsqueeze(-1).expand(-1, -1, frames))
    above = mel.gather(1, high.unsqueeze(-1).expand(-1, -1, frames))
    return below * (1 - weight) + above * weight



def masked_l1(mel_hat: torch.Tensor, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean absolute log-mel error over each item's real frames."""
    mask = sequence_mask(lengths, mel.shape[-1]).unsqueeze(1).to(mel.dtype)
    return ((mel_hat - mel).abs() * mask).sum() / (mask.sum() * mel.shape[1])


@task("flow_vae")
class FlowVAETask(Task):
    """Training recipe: mel L1 + KL on random crops; with the waveform head, also LSGAN + feature matching."""

    def __init__(self, model_config: dict):
        super().__init__(model_config)
        self.config = FlowVAEConfig.from_dict(model_config)
        self._checked_encoder: int | None = None  # the model whose encoder matched the quantizer's

    def build(self) -> FlowVAE:
        return FlowVAE(self.config)

    def discriminator(self) -> MultiDiscriminator | None:
        # Kept here too: the generator's adversarial and feature-matching losses run through it.
        self._discriminator = MultiDiscriminator() if self.config.waveform_head else None
        return self._discriminator

    def losses(self, model: nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict, tuple | None]:
        c = self.config
        features, lengths = batch["features"], batch["feature_lengths"]
        wav = None
        if features.shape[1] == 1:  # raw waveform batches (data.feature: wav) for the waveform head
            wav = features[:, 0]
            mel = audio.mel_spectrogram(wav, wav.device)
            lengths = torch.div(lengths, audio.MelConfig().hop_length, rounding_mode="floor").clamp_min(1)
        else:
            mel = features
        if c.warp and model.training:
            factors = 1 + c.warp * (2 * torch.rand(mel.shape[0], device=mel.device) - 1)
            mel = warp_frequencies(mel, factors)
        if c.quantizer:
            return self.quantized_losses(model, mel, lengths, step)
        out = model(mel, lengths)
        recon = masked_l1(out["mel_hat"], mel, lengths)
        loss = c.lambda_recon * recon + c.lambda_kl * out["kl"]
        sigma = (out["log_sigma"].exp() * out["mask"]).sum() / (out["mask"].sum() * out["mu"].shape[1])
        logs = {"recon": recon.item(), "kl": out["kl"].item(), "sigma": sigma.item()}
        if wav is None or "wav_hat" not in out:
            return loss, logs, None
        wav_hat = out["wav_hat"][:, : wav.shape[-1]]
        wave_mel = (audio.mel_spectrogram(wav_hat, wav.device, grad=True)[..., : mel.shape[-1]] - mel).abs().mean()
        discriminator = self._discriminator
        real, fake = discriminator(wav), discriminator(wav_hat)
        adv, fm = generator_adversarial_loss(fake), feature_matching_loss(real, fake)
        loss = loss + c.lambda_recon * wave_mel + c.lambda_adv * adv + c.lambda_fm * fm
        logs.update({"wave_mel": wave_mel.item(), "adv": adv.item(), "fm": fm.item()})
        return loss, logs, (wav, wav_hat.detach())

    def quantizer(self, device: torch.device):
        """The latent RVQ whose quantized latents the decoder learns from (frozen)."""
        codec = registry.load_model(self.config.quantizer, str(device))[0]
        if not hasattr(codec, "quantize_latents") or codec.config.fitted.latent_dim != self.config.latent_dim:
            raise ValueError(f"quantizer {self.config.quantizer!r} must be a latent RVQ over {self.config.latent_dim}"
                             "-dim latents of this codec (models/latent_rvq.py)")
        return codec

    def depth_range(self, codec) -> tuple[int, int]:
        """The lowest and highest number of the quantizer's layers a crop is decoded from."""
        low, high = self.config.quantizer_layers or (1, codec.num_codebooks)
        if high > codec.num_codebooks:
            raise ValueError(f"quantizer_layers: {self.config.quantizer} has {codec.num_codebooks} layers, not {high}")
        return low, high

    def depths(self, codec, count: int, step: int) -> torch.Tensor:
        low, high = self.depth_range(codec)
        return torch.randint(low, high + 1, (count,), generator=step_generator(step, 17))

    def quantized_losses(self, model: nn.Module, mel: torch.Tensor, lengths: torch.Tensor, step: int
                         ) -> tuple[torch.Tensor, dict, None]:
        """Mel L1 of the decoder given each crop's posterior means through its drawn number of RVQ layers (the
        encoder frozen; the decoding runs through the wrapped model, so DDP averages its gradients)."""
        core = unwrap(model)
        codec = self.quantizer(mel.device)
        if self._checked_encoder != id(core):  # the codebooks hold only for the encoder they were fit on
            fitted_on = registry.load_model(codec.config.latent_codec, str(mel.device))[0]
            if fitted_on.posterior_key != core.posterior_key:
                raise ValueError(f"quantizer {self.config.quantizer!r} was fit on {codec.config.latent_codec}'s "
                                 "latents: start from that codec (train.init_from) and freeze its encoder")
            self._checked_encoder = id(core)
        layers = self.depths(codec, len(mel), step).to(mel.device)
        with torch.no_grad(), torch.autocast(mel.device.type, enabled=False):  # nearest codewords in fp32
            mu, _ = core.encode(mel.float())
            z = codec.quantize_latents(mu, layers)
        recon = masked_l1(model(mel, lengths, latents=z)["mel_hat"], mel, lengths)
        return self.config.lambda_recon * recon, {"recon": recon.item(), "layers": float(layers.float().mean())}, None

    def discriminator_loss(self, discriminator: nn.Module, cache: tuple) -> tuple[torch.Tensor, dict]:
        wav, wav_hat = cache
        loss = discriminator_loss(discriminator(wav), discriminator(wav_hat))
        return loss, {"disc": loss.item()}

    def validate(self, model: nn.Module, items: list[dict], out_dir: Path, scorers: Scorers) -> dict:
        """Reconstruct validation utterances through the mel head and the shared vocoder; with signal
        scorers, their PESQ-wb and STOI against the input."""
        scores = SignalScores(out_dir, scorers)
        codec = self.quantizer(next(model.parameters()).device) if self.config.quantizer else None
        for item in items:
            wav = audio.load_audio(resolve_audio(item["manifest"], item["path"]), audio.SAMPLE_RATE, max_seconds=None)
            mu, _ = model.encode_wav(wav)
            if codec is None:
                scores.add(item["id"], wav, model.decode_wav(mu))
                continue
            latents = torch.from_numpy(mu).T[None].to(codec.mean.device)
            for layers in sorted(set(self.depth_range(codec))):
                z = codec.quantize_latents(latents, torch.tensor([layers], device=latents.device))
                scores.add(item["id"], wav, model.decode_wav(z[0].T.cpu())[: len(wav)], f"_q{layers}")
        return scores.means()
