"""DNSMOS (Reddy et al. 2022): non-intrusive P.835 SIG / BAK / OVRL and P.808 MOS predictors.

The ONNX models ship in the PyPI package `speechmos`. Clips shorter than the models'
9 s window are tiled to fill it (the reference implementation does the same).
"""

from __future__ import annotations

import numpy as np

from evaluation.metrics.base import METRIC_RATE, MetricUnavailable, Sample, metric, package_version, wheel_file

SPEECHMOS = "speechmos==0.0.1.1"


class DnsmosScorer:
    def __init__(self, device: str):
        primary = wheel_file(SPEECHMOS, "speechmos/dnsmos_models/sig_bak_ovr.onnx", module="speechmos")
        p808 = wheel_file(SPEECHMOS, "speechmos/dnsmos_models/model_v8.onnx", module="speechmos")
        try:
            from speechmos.dnsmos import DNSMOS
        except ImportError as error:  # onnxruntime or requests missing
            raise MetricUnavailable(f"speechmos cannot be imported: {error}") from None
        self.model = DNSMOS(str(primary), str(p808))
        self.info = {"mos_model": f"DNSMOS P.835 sig_bak_ovr.onnx + P.808 model_v8.onnx (speechmos "
                                  f"{package_version('speechmos')}, onnxruntime {package_version('onnxruntime')})"}

    def __call__(self, sample: Sample) -> dict[str, float]:
        wav = np.clip(sample.audio(sr=METRIC_RATE), -1.0, 1.0)
        scores = self.model(wav, METRIC_RATE, False)
        return {"dnsmos_sig": float(scores["sig_mos"]), "dnsmos_bak": float(scores["bak_mos"]),
                "dnsmos_ovrl": float(scores["ovrl_mos"]), "dnsmos_p808": float(scores["p808_mos"])}

    def close(self) -> None:
        self.model = None


@metric("dnsmos", ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808"), needs=(), higher_is_better=True,
        description="DNSMOS non-intrusive MOS (1-5): P.835 signal, background, overall; P.808")
def _dnsmos(device: str, options: dict) -> DnsmosScorer:
    return DnsmosScorer(device)
