import math

import numpy as np
import pytest

from evaluation.metrics import METRICS, MetricError, Sample, get_metric, pesq_score, si_sdr, stoi_score
from evaluation.metrics.asr import (
    LOOP_RATIO,
    cer_counts,
    edit_counts,
    encoder_window,
    load_asr,
    normalize_for_wer,
    onset_error,
    wer_counts,
)
from evaluation.metrics.latent import frechet_distance, latent_figures, latent_statistics, sample_energy_distance
from evaluation.metrics.speaker import cosine, load_ge2e
from models import audio

SR = audio.SAMPLE_RATE
ARCTIC_TEXT = "And you always want to see it in the superlative degree."


def noisy(wav: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(wav)).astype(np.float32)
    noise *= np.sqrt(np.mean(wav ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
    return wav + noise


def test_registry_declares_needs_and_columns():
    assert {"wer", "sim", "pesq", "stoi", "sisdr", "dnsmos", "latent"} <= set(METRICS)
    assert get_metric("wer").needs == ("text",)
    assert "reference" in get_metric("pesq").needs
    with pytest.raises(ValueError, match="unknown metric 'mos'"):
        get_metric("mos")


def test_identical_signals_score_the_maximum(arctic_wav):
    assert pesq_score(arctic_wav, arctic_wav, SR, "wb") == pytest.approx(4.64, abs=0.01)
    assert pesq_score(arctic_wav, arctic_wav, SR, "nb") > 4.4
    assert stoi_score(arctic_wav, arctic_wav, SR) == pytest.approx(1.0, abs=1e-6)
    value = si_sdr(arctic_wav, arctic_wav, SR)
    assert math.isfinite(value) and value > 90  # guarded, not infinite


def test_si_sdr_is_scale_invariant_and_tracks_snr(arctic_path):
    clean = audio.load_audio(arctic_path, 16000)  # at 16 kHz no resampling filters the white noise
    degraded = noisy(clean, 10.0)
    assert si_sdr(clean, 0.3 * degraded, 16000) == pytest.approx(si_sdr(clean, degraded, 16000), abs=1e-3)
    assert si_sdr(clean, degraded, 16000) == pytest.approx(10.0, abs=0.3)


def test_stoi_falls_monotonically_with_noise(arctic_wav):
    scores = [stoi_score(arctic_wav, noisy(arctic_wav, snr), SR) for snr in (20, 10, 0, -10)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] - scores[-1] > 0.3


def test_signal_metrics_refuse_too_short_and_silent_inputs(arctic_wav):
    with pytest.raises(MetricError, match="too short"):
        pesq_score(arctic_wav[:1000], arctic_wav[:1000], SR)
    with pytest.raises(MetricError, match="silent"):
        si_sdr(np.zeros_like(arctic_wav), arctic_wav, SR)


def test_wer_counts_known_edits():
    assert wer_counts("the cat sat on the mat", "the cat sat on the mat").rate == 0
    counts = wer_counts("the cat sat on the mat", "the bat sat on mat")
    assert (counts.substitutions, counts.deletions, counts.insertions) == (1, 1, 0)
    assert counts.rate == pytest.approx(2 / 6)
    inserted = edit_counts(["a", "b"], ["a", "x", "b", "y"])
    assert (inserted.substitutions, inserted.deletions, inserted.insertions) == (0, 0, 2)
    assert cer_counts("abc", "abd").rate == pytest.approx(1 / 3)
    with pytest.raises(MetricError, match="empty"):
        wer_counts("...", "anything").rate


def test_onset_error_counts_only_the_first_words():
    assert onset_error("the cat sat on the mat", "the cat sat on the mat") == 0
    assert onset_error("the cat sat on the mat", "a cat sat on the mat") == 0.5
    assert onset_error("the cat sat on the mat", "sat on the mat") == 1.0  # both deleted
    assert onset_error("the cat sat on the mat", "stranger the cat sat on the hat") == 0  # an insertion before
    assert onset_error("the cat sat on the mat", "") == 1.0
    assert onset_error("hello", "hello") == 0
    with pytest.raises(MetricError, match="empty"):
        onset_error("...", "anything")


def test_normalizer_is_shared_by_reference_and_hypothesis():
    expected = "doctor smith paid five dollars in nineteen ninety nine"
    assert normalize_for_wer("Dr. Smith paid $5 -- in 1999!") == expected
    assert wer_counts("It's a well-known fact.", "its a well known fact").rate == pytest.approx(1 / 5)
    assert wer_counts("He has 3 cats.", "he has three cats").rate == 0
    assert normalize_for_wer("'Quoted' words don't lose apostrophes") == "quoted words don't lose apostrophes"


@pytest.fixture(scope="module")
def wer_scorer():
    return get_metric("wer").factory("cpu", {})


def test_whisper_transcribes_the_real_recording(wer_scorer, arctic_path):
    values = wer_scorer(Sample("arctic", arctic_path, text=ARCTIC_TEXT))
    assert values["wer"] == 0.0 and values["reference_words"] == 11
    assert "superlative" in values["transcript"].lower()
    assert wer_scorer.info["asr_model"] == "tiny.en" and "normalizer" in wer_scorer.info


def test_encoder_window_fits_the_clip():
    assert encoder_window(300) == 2000  # 3 s: the 20 s minimum
    assert encoder_window(2200) == 2500  # 22 s + 1 s of silence, in 5 s steps
    assert encoder_window(2900) == 3000 and encoder_window(2901) is None  # over 29 s: long-form decoding


def test_transcripts_repeat_exactly_and_do_not_loop(wer_scorer, arctic_path):
    """Degraded speech (the recording under noise at -9.5 dB SNR): faster-whisper's sampled fallback gave it 5
    different transcripts in 6 calls (faster-whisper-30s, measured when this test was written)."""
    from concurrent.futures import ThreadPoolExecutor

    from faster_whisper.transcribe import get_compression_ratio

    clean = audio.load_audio(arctic_path, 16000)
    noisy = clean + np.random.default_rng(0).normal(size=clean.shape).astype(np.float32) * 3 * clean.std()
    asr = wer_scorer.asr
    with ThreadPoolExecutor(2) as pool:
        transcripts = list(pool.map(asr.transcribe, [noisy] * 4 + [clean] * 2))
    assert len(set(transcripts[:4])) == 1 and len(set(transcripts[4:])) == 1
    assert get_compression_ratio(transcripts[0]) <= LOOP_RATIO  # not caught in a loop
    assert wer_scorer.info["asr_decoding"].startswith("v2")
    long_form = load_asr("faster-whisper-30s:tiny.en", "cpu")  # the earlier decoding, for old reports
    assert normalize_for_wer(long_form.transcribe(clean)) == normalize_for_wer(transcripts[4])


def test_wer_without_text_is_nan_with_reason(wer_scorer, arctic_path):
    with pytest.raises(MetricError, match="no reference transcript"):
        wer_scorer(Sample("arctic", arctic_path, text=None))


def test_unknown_asr_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="BACKEND:MODEL"):
        get_metric("wer").factory("cpu", {"asr": "kaldi"})


def test_speaker_similarity_orders_same_above_different_voice(mini):
    corpus, _, _ = mini
    wavs = corpus / "wavs"
    encoder = load_ge2e("cpu")

    def embed(voice: str, sentence: int) -> np.ndarray:
        return encoder.embed(audio.load_audio(wavs / voice / f"harvard-{sentence}.wav", 16000))

    same = cosine(embed("flite-slt", 601), embed("flite-slt", 602))
    other = cosine(embed("flite-slt", 601), embed("espeak-en-us-m1", 601))
    assert same > 0.8 and same > other + 0.1


def test_similarity_of_silence_is_nan_with_reason(tmp_path, arctic_path):
    silent = audio.save_audio(tmp_path / "silent.wav", np.zeros(SR, np.float32))
    scorer = get_metric("sim").factory("cpu", {})
    with pytest.raises(MetricError, match="no speaker embedding|silent"):
        scorer(Sample("x", silent, reference_path=arctic_path))
    with pytest.raises(MetricError, match="neither an enrollment nor a reference"):
        scorer(Sample("x", arctic_path))


@pytest.mark.slow
def test_dnsmos_scores_clean_above_noisy(tmp_path, arctic_path, arctic_wav):
    scorer = get_metric("dnsmos").factory("cpu", {})
    clean = scorer(Sample("clean", arctic_path))
    noisy_path = audio.save_audio(tmp_path / "noisy.wav", np.clip(noisy(arctic_wav, 0.0), -1, 1))
    degraded = scorer(Sample("noisy", noisy_path))
    assert all(1.0 <= v <= 5.0 for v in clean.values())
    assert clean["dnsmos_bak"] > degraded["dnsmos_bak"] + 0.5


def test_distribution_distances():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((500, 4)), rng.standard_normal((500, 4))
    shifted = y + 1.0
    assert abs(sample_energy_distance(x, y)) < 0.05 < sample_energy_distance(x, shifted)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(x, shifted) == pytest.approx(4.0, rel=0.2)  # |mean shift|^2


def test_latent_statistics_and_figures():
    rng = np.random.default_rng(0)

    def system(offset: float, std: bool) -> dict:
        return {f"u{i}": {"mean": rng.standard_normal((50, 3)).astype(np.float32) + offset,
                          "std": np.full((50, 3), 0.5, np.float32) if std else None} for i in range(4)}

    systems = {"gt": system(0.0, True), "model": system(2.0, True)}
    stats = latent_statistics(systems)
    assert stats["reference"] == "gt"
    model = stats["systems"]["model"]
    assert model["frames"] == 200 and len(model["dim_mean"]) == 3
    assert model["posterior_var"] == pytest.approx([0.25] * 3)
    assert model["energy_distance"] > 1 and "energy_distance" not in stats["systems"]["gt"]
    speakers = {f"u{i}": "a" if i % 2 else "b" for i in range(4)}
    titles = [f.layout.title.text for f in latent_figures(systems, stats, speakers)]
    assert any("posterior variance" in t for t in titles)
    assert any("PCA" in t and "speaker" in t for t in titles)


def test_distinct_speakers_threshold_and_groups():
    from evaluation.speakers import distinct_set, equal_error_threshold, told_apart

    rng = np.random.default_rng(0)
    same, different = rng.normal(0.8, 0.05, 2000), rng.normal(0.5, 0.1, 8000)
    threshold, eer = equal_error_threshold(same, different)
    assert 0.65 < threshold < 0.75 and eer < 0.05
    assert abs(np.mean(same < threshold) - np.mean(different >= threshold)) < 0.01  # the equal-error point
    assert equal_error_threshold(np.array([0.9, 0.95]), np.array([0.1, 0.2]))[1] == 0.0  # separable: no error

    def speaker(direction, spread=0.05):
        e = np.asarray(direction, float)[None] + spread * rng.standard_normal((8, 3))
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    # a and b: one voice twice; c apart from both; d between a and c but nearer to neither
    embeddings = np.stack([speaker([1, 0, 0]), speaker([1, 0, 0]), speaker([0, 1, 0]), speaker([0, 0, 1])])
    apart = told_apart(embeddings)
    assert not apart[0, 1] and not apart[1, 0] and apart[0, 2] and apart[2, 3] and apart.diagonal().all()
    chosen = distinct_set(list("abcd"), apart)
    assert len(chosen) == 3 and {"c", "d"} <= set(chosen) and len({"a", "b"} & set(chosen)) == 1


def test_latent_projections_keep_many_systems_apart():
    """With more systems than a palette has colours, every group still looks different (colour, shape)."""
    from evaluation.metrics.latent import latent_figures, latent_statistics

    rng = np.random.default_rng(0)
    systems = {f"s{k}": {f"u{j}": {"mean": rng.normal(size=(5, 4)), "std": np.ones((5, 4))} for j in range(2)}
               for k in range(30)}
    figures = latent_figures(systems, latent_statistics(systems))
    projection = next(f for f in figures if "by system" in f.layout.title.text)
    looks = {(trace.marker.color, trace.marker.symbol) for trace in projection.data}
    assert len(projection.data) == 30 and len(looks) == 30
