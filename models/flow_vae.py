"""Flow-VAE: the continuous speech latent space of KALL-E (Zhu et al. 2024), at our scale.

    encoder      mel (80 x 86 Hz) -> strided dilated convs -> posterior q(z|x) = N(mu, sigma) at 21.5 Hz
    flow f       affine couplings with exact log-determinants; z~ = f(z) should look N(0, I)
    decoder      z -> transposed convs with Snake activations -> mel (for the shared HiFi-GAN),
                 and optionally a waveform head (trained adversarially, on a GPU)

    L = lambda_kl L_kl + lambda_recon L1(mel) [+ lambda_adv L_adv + lambda_fm L_fm]

The KL regularizer is the paper's: the prior on z is the flow's pullback of N(0, I),
p(z) = N(f(z); 0, I) |det df/dz|, so

    L_kl = E_q[ log q(z|x) - log N(f(z); 0, I) - log |det df/dz| ]

estimated with the reparameterized sample z = mu + sigma * eps. With an identity flow it is
the closed-form Gaussian KL. SLED and KALL-E model sequences of these latents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models import audio, registry
from models.config import ModelConfig
from models.modules import (
    Snake,
    residual_stack,
    sequence_mask,
)
from models.roles import LATENT_CODEC
from models.vocoder import ChunkedDecoder, get_vocoder

SILENCE = math.log(audio.MelConfig().clamp)  # log-mel of digital silence: pads inputs to whole latent frames


@dataclass
class FlowVAEConfig(ModelConfig):
    label: ClassVar[str] = "Flow-VAE"

    n_mels: int = 80
    channels: int = 192
    latent_dim: int = 64
    strides: tuple[int, ...] = (2, 2)  # mel frames per latent frame = product (86.1 Hz -> 21.5 Hz)
    dilations: tuple[int, ...] = (1, 3, 9)
    flow_layers: int = 4
    flow_hidden: int = 128
    flow_kernel: int = 5
    waveform_head: bool = False
    wave_channels: int = 128
    wave_strides: tuple[int, ...] = (8, 8, 4)  # mel rate -> 22.05 kHz (even; product = hop 256)
    lambda_kl: float = 0.01
    lambda_recon: float = 1.0
    lambda_adv: float = 1.0
    lambda_fm: float = 2.0
    # Training-time voice variety: each crop's mel axis is stretched by a factor in [1 - warp, 1 + warp]
    # (vocal-tract-length perturbation), so a dozen training voices cover more of the unseen ones.
    warp: float = 0.0
    # Training the decoder for a token codec over these latents (the encoder and flow frozen): each crop's
    # posterior means pass through the first k layers of `quantizer` (a latent RVQ checkpoint), k drawn per
    # crop in `quantizer_layers` (None: 1 to all), so the decoder learns to speak coarse latents too
    # (quantizer dropout, after SoundStream); the RVQ then decodes through it (its `decoder`).
    quantizer: str | None = None
    quantizer_layers: tuple[int, int] | None = None
    model: str = field(default="flow_vae", init=False)

    def check(self, source: str) -> None:
        if self.quantizer_layers is not None and not 1 <= self.quantizer_layers[0] <= self.quantizer_layers[1]:
            raise ValueError(f"{source}: quantizer_layers must be [lowest, highest] with 1 <= lowest <= highest")
        if self.quantizer and self.waveform_head:
            raise ValueError(f"{source}: a quantizer trains the mel decoder alone; set waveform_head: false")

    @property
    def downsample(self) -> int:
        return int(np.prod(self.strides))

    @property
    def frame_rate(self) -> float:
        return audio.SAMPLE_RATE / audio.MelConfig().hop_length / self.downsample


class Encoder(nn.Module):
    def __init__(self, c: FlowVAEConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(c.n_mels, c.channels, 7, padding=3)]
        for s in c.strides:
            layers += [residual_stack(c.channels, c.dilations), nn.LeakyReLU(0.1),
                       nn.Conv1d(c.channels, c.channels, 2 * s, stride=s, padding=s // 2)]
        layers += [residual_stack(c.channels, c.dilations), nn.LeakyReLU(0.1),
                   nn.Conv1d(c.channels, 2 * c.latent_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sigma = self.net(mel).chunk(2, dim=1)
        return mu, log_sigma.clamp(-9.0, 4.0)


class Decoder(nn.Module):
    """z -> hidden features at the mel rate; heads turn them into mel or waveform."""

    def __init__(self, c: FlowVAEConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(c.latent_dim, c.channels, 7, padding=3),
                                   residual_stack(c.channels, c.dilations, snake=True)]
        for s in reversed(c.strides):
            layers += [Snake(c.channels), nn.ConvTranspose1d(c.channels, c.channels, 2 * s, stride=s, padding=s // 2),
                       residual_stack(c.channels, c.dilations, snake=True)]
        self.net = nn.Sequential(*layers)
        self.mel_head = nn.Sequential(Snake(c.channels), nn.Conv1d(c.channels, c.n_mels, 7, padding=3))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.net(z)
        return self.mel_head(hidden), hidden


class WaveformHead(nn.Module):
    """BigVGAN-style upsampler from the decoder's mel-rate features to 22.05 kHz samples."""

    def __init__(self, c: FlowVAEConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(c.channels, c.wave_channels, 7, padding=3)]
        channels = c.wave_channels
        for s in c.wave_strides:
            out = max(channels // 2, 16)
            layers += [Snake(channels), nn.ConvTranspose1d(channels, out, 2 * s, stride=s, padding=s // 2),
                       residual_stack(out, c.dilations, snake=True)]
            channels = out
        layers += [Snake(channels), nn.Conv1d(channels, 1, 7, padding=3), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden).squeeze(1)


class AffineCoupling(nn.Module):
    """Half the channels predict a scale and shift for the other half (RealNVP; Dinh et al. 2017).

    The log-scale is tanh-bounded for stable training; the map stays exactly invertible.
    The output projection starts at zero, so a new flow is the identity.
    """

    def __init__(self, dim: int, hidden: int, kernel: int):
        super().__init__()
        self.half = dim // 2
        self.net = nn.Sequential(nn.Conv1d(self.half, hidden, kernel, padding=kernel // 2), nn.LeakyReLU(0.1),
                                 nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2), nn.LeakyReLU(0.1))
        self.proj = nn.Conv1d(hidden, 2 * (dim - self.half), 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def _scale_shift(self, za: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_log_s, shift = self.proj(self.net(za * mask)).chunk(2, dim=1)
        return torch.tanh(raw_log_s) * mask, shift * mask

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        za, zb = z[:, : self.half], z[:, self.half :]
        log_s, shift = self._scale_shift(za, mask)
        zb = (zb * log_s.exp() + shift) * mask
        return torch.cat([za, zb], dim=1), log_s.sum(dim=(1, 2))

    def inverse(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ya, yb = y[:, : self.half], y[:, self.half :]
        log_s, shift = self._scale_shift(ya, mask)
        return torch.cat([ya, (yb - shift) * (-log_s).exp() * mask], dim=1)


class Flow(nn.Module):
    """Couplings with a channel reversal between them (so every channel gets transformed)."""

    def __init__(self, c: FlowVAEConfig):
        super().__init__()
        self.couplings = nn.ModuleList(AffineCoupling(c.latent_dim, c.flow_hidden, c.flow_kernel)
                                       for _ in range(c.flow_layers))

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        for coupling in self.couplings:
            z, ld = coupling(z, mask)
            logdet = logdet + ld
            z = z.flip(1)
        return z, logdet

    def inverse(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for coupling in reversed(self.couplings):
            y = coupling.inverse(y.flip(1), mask)
        return y


def flow_kl(mu: torch.Tensor, log_sigma: torch.Tensor, eps: torch.Tensor, flow: Flow,
            mask: torch.Tensor) -> torch.Tensor:
    """Monte-Carlo KL(q(z|x) || p(z)) with p the flow's pullback of N(0, I), per latent element."""
    z = mu + log_sigma.exp() * eps
    z_tilde, logdet = flow(z, mask)
    z_tilde, logdet = z_tilde.float(), logdet.float()  # sums of squares in fp32 under bf16 autocast
    log_q = -log_sigma - 0.5 * eps ** 2  # the 0.5 log(2 pi) terms of q and N(0, I) cancel
    log_p = -0.5 * z_tilde ** 2
    elements = mask.sum() * mu.shape[1]
    return (((log_q - log_p) * mask).sum() - logdet.sum()) / elements


@registry.register("flow_vae", role=LATENT_CODEC, config=FlowVAEConfig)
class FlowVAE(nn.Module):
    sample_rate = audio.SAMPLE_RATE  # models.roles.LatentCodec

    def __init__(self, config: FlowVAEConfig = FlowVAEConfig()):
        super().__init__()
        self.config = config
        self.frame_rate, self.latent_dim = config.frame_rate, config.latent_dim
        self.encoder = Encoder(config)
        self.flow = Flow(config)
        self.decoder = Decoder(config)
        self.waveform_head = WaveformHead(config) if config.waveform_head else None

    # ---------------------------------------------------------------- shapes

    def pad_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """Pad frames (with silence) to a whole number of latent frames."""
        extra = (-mel.shape[-1]) % self.config.downsample
        return F.pad(mel, (0, extra), value=SILENCE) if extra else mel

    def latent_lengths(self, mel_lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(mel_lengths + self.config.downsample - 1, self.config.downsample, rounding_mode="floor")

    # ---------------------------------------------------------------- the method

    def encode(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, 80, frames) log-mel -> posterior mean and log-std, (batch, latent_dim, latent_frames)."""
        return self.encoder(self.pad_mel(mel))

    def posterior(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """models.roles.LatentCodec: the posterior latent-sequence models train on (= encode)."""
        return self.encode(mel)

    @property
    def posterior_key(self) -> str:
        """The posterior depends on the encoder's weights only."""
        return registry.weights_digest(self.encoder)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(batch, latent_dim, latent_frames) -> log-mel (batch, 80, latent_frames * downsample)."""
        return self.decoder(z)[0]

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor, latents: torch.Tensor | None = None) -> dict:
        """Encode, sample and decode; with `latents` (batch, latent_dim, frames) given, decode those alone (a
        decoder trained on another's latents, e.g. a quantizer's): {"mel_hat"}."""
        if latents is not None:
            return {"mel_hat": self.decode(latents)[..., : mel.shape[-1]]}
        mu, log_sigma = self.encode(mel)
        mask = sequence_mask(self.latent_lengths(mel_lengths), mu.shape[-1]).unsqueeze(1).to(mu.dtype)
        eps = torch.randn_like(mu)
        z = mu + log_sigma.exp() * eps
        mel_hat, hidden = self.decoder(z)
        out = {"mu": mu, "log_sigma": log_sigma, "z": z, "mask": mask, "hidden": hidden,
               "mel_hat": mel_hat[..., : mel.shape[-1]],
               "kl": flow_kl(mu, log_sigma, eps, self.flow, mask)}
        if self.waveform_head is not None:
            out["wav_hat"] = self.waveform_head(hidden)
        return out

    # ---------------------------------------------------------------- waveform API

    @torch.no_grad()
    def encode_wav(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Waveform at 22.05 kHz -> posterior (mu, sigma), each (latent_frames, latent_dim)."""
        device = next(self.parameters()).device
        mel = audio.mel_spectrogram(wav, device).unsqueeze(0)
        mu, log_sigma = self.encode(mel)
        return mu[0].T.cpu().numpy(), log_sigma[0].exp().T.cpu().numpy()

    @torch.no_grad()
    def decode_mel(self, z: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(latent_frames, latent_dim) -> log-mel (80, frames)."""
        device = next(self.parameters()).device
        z = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=device).T.unsqueeze(0)
        return self.decode(z)[0]

    def streaming_decoder(self, precision: str = "fp32") -> ChunkedDecoder:
        # the default decoder's receptive field spans ~27 latent frames each side, little of it past ~16
        return ChunkedDecoder(self.decode_mel, self.config.downsample, frame_context=24, frame_lookahead=16,
                              precision=precision, device=str(next(self.parameters()).device))

    @torch.no_grad()
    def decode_wav(self, z: np.ndarray | torch.Tensor, head: str = "mel", precision: str = "fp32") -> np.ndarray:
        """Latents -> waveform at 22.05 kHz, through the shared vocoder ("mel", at `precision`) or the waveform head."""
        if head == "waveform":
            if self.waveform_head is None:
                raise ValueError("this checkpoint has no waveform head (trained with the mel head only)")
            device = next(self.parameters()).device
            z = torch.as_tensor(np.asarray(z), dtype=torch.float32, device=device).T.unsqueeze(0)
            return self.waveform_head(self.decoder(z)[1])[0].cpu().numpy()
        mel = self.decode_mel(z)
        return get_vocoder(str(mel.device), precision).synthesize(mel).cpu().numpy()
