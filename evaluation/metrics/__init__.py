"""Objective metrics, registered by name (see base.py for the contract).

    pesq, stoi, sisdr        intrusive, against the clean reference        (signal.py)
    wer                      ASR transcript against the text               (asr.py)
    sim, sim_ecapa, sim_wavlm  speaker similarity to an enrollment         (speaker.py)
    dnsmos                   non-intrusive MOS                             (mos.py)
    latent                   codec latents for distribution statistics     (latent.py)

RTF is measured by the runner while it generates (evaluation/runner.py).
"""

from evaluation.metrics import asr, latent, mos, signal, speaker  # noqa: F401  (registers the metrics)
from evaluation.metrics.base import METRICS, MetricError, MetricUnavailable, Sample, get_metric
from evaluation.metrics.signal import pesq_score, si_sdr, stoi_score

__all__ = ["METRICS", "MetricError", "MetricUnavailable", "Sample", "get_metric", "pesq_score", "si_sdr",
           "stoi_score"]
