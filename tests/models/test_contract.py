"""The backend contract (models.roles, models.registry).

Every registered backend, through its tiny config, builds, survives a safetensors round trip
unchanged, answers its role's smoke call, trains two steps with finite losses and resumes. And a
backend of any role added by registering alone appears in the pipelines, the CLI, the evaluation
systems, the A/B arena and the studio's menus without an edit anywhere else: this file defines one
per role (a latent codec, a non-autoregressive TTS, a token codec with two windows, a semantic
tokenizer, an acoustic decoder, a speech-to-speech backend whose checkpoints serve one task each, and a
mel vocoder) and shows each of them there."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from models import audio, pipelines, registry
from models.roles import (
    ACOUSTIC_DECODER,
    CAPABILITIES,
    LATENT_CODEC,
    SEMANTIC_TOKENIZER,
    SPEAKER_ENCODER,
    SPEECH_TO_SPEECH,
    STREAMING,
    TOKEN_CODEC,
    TTS,
    VOCODER,
    AcousticDecoder,
    Control,
    LatentCodec,
    MelVocoder,
    SemanticTokenizer,
    SpeakerEncoder,
    SpeechRequest,
    SpeechToSpeech,
    StreamingTTS,
    TokenCodec,
    TTSBackend,
    TTSRequest,
    check_declared,
)
from models.training import Trainer, load_config
from tests.conftest import REPO, tone

TINY_CONFIGS = sorted((REPO / "models" / "configs").glob("*_tiny.yaml"))
CARD = {"data": "none (contract test)", "steps": 0, "wall_time_s": 0.0, "device": "cpu", "metrics": {}}
SR = audio.SAMPLE_RATE


def tiny(path) -> tuple[str, dict]:
    config = load_config(path)
    return config["model"]["model"], config


def smoke(model, role: str):
    """The role's smoke call, deterministic: what the round trip must reproduce. It uses what the role's
    Protocol declares and the backend's own declared defaults, nothing of one backend in particular."""
    torch.manual_seed(0)
    if role == LATENT_CODEC:
        assert isinstance(model, LatentCodec)
        mean, _ = model.encode_wav(tone(1.0))
        decoder = model.streaming_decoder()
        streamed = np.concatenate([decoder.push(list(torch.from_numpy(mean))), decoder.flush()])
        assert mean.shape[1] == model.latent_dim and len(streamed) > 0.5 * SR
        return mean
    if role == TTS:
        assert isinstance(model, TTSBackend) and set(model.CAPABILITIES) <= set(CAPABILITIES)
        request = TTSRequest("one two three.", seed=3, controls={k: c.default for k, c in model.CONTROLS.items()})
        if STREAMING in model.CAPABILITIES:  # its frames, without the codec checkpoint they decode through
            assert isinstance(model, StreamingTTS)
            frames = list(model.frames(request))
            assert frames and all(torch.isfinite(f).all() for f in frames)
            return torch.stack(frames).numpy()
        wav = model.synthesize(request)
        assert len(wav) and np.isfinite(wav).all()
        return wav
    if role == TOKEN_CODEC:
        assert isinstance(model, TokenCodec)
        outputs = []
        for window in model.windows:
            tokens = model.encode_wav(tone(1.0), window)
            assert tokens.dtype == np.int64 and tokens.shape[0] == model.num_codebooks
            assert 0 <= tokens.min() and tokens.max() < model.codebook_size
            assert model.bitrate_at(window) > 0 and model.frame_rate_at(window) > 0
            embedded = model.embed(tokens)
            assert embedded.shape[0] == tokens.shape[1] and len(model.decode_tokens(tokens, window)) > 0.5 * SR
            assert len(model.decode_tokens(tokens[:1], window)) == len(model.decode_tokens(tokens, window))
            outputs += [tokens.ravel().astype(np.float32), embedded.ravel()]
        return np.concatenate(outputs)
    if role == SPEAKER_ENCODER:
        assert isinstance(model, SpeakerEncoder)
        embedding = model.embed_wav(tone(1.0))
        assert embedding.shape == (model.embedding_dim,) and np.isclose(np.linalg.norm(embedding), 1.0, atol=1e-5)
        return embedding
    if role == SEMANTIC_TOKENIZER:
        assert isinstance(model, SemanticTokenizer)
        tokens = model.tokens_wav(tone(1.0))
        assert tokens.dtype == np.int64 and 0 <= tokens.min() and tokens.max() < model.vocabulary_size
        features = model.features_wav([tone(1.0)])[0]
        assert len(features) == len(tokens)
        return np.concatenate([tokens.astype(np.float32), model.embed(torch.from_numpy(tokens)).numpy().ravel()])
    if role == ACOUSTIC_DECODER:
        assert isinstance(model, AcousticDecoder)
        tokens = model.generate_tokens(np.arange(8), None, 0, {k: c.default for k, c in model.CONTROLS.items()})
        assert tokens.dtype == np.int64 and tokens.ndim == 2
        return tokens.astype(np.float32)
    if role == SPEECH_TO_SPEECH:
        assert isinstance(model, SpeechToSpeech) and model.tasks
        out = model.transform(SpeechRequest(model.tasks[0], tone(1.0), tone(1.0, amp=0.2), 0,
                                            {k: c.default for k, c in model.CONTROLS.items()}))
        assert len(out) and np.isfinite(out).all()
        return out
    if role == VOCODER:
        assert isinstance(model, MelVocoder)
        mel = audio.mel_spectrogram(tone(1.0))[None]
        with torch.no_grad():
            wav = model(mel)
        assert wav.shape == (1, mel.shape[-1] * model.hop_length) and torch.isfinite(wav).all()
        return wav.numpy()
    raise AssertionError(f"no smoke call for role {role}")


def with_stages(name: str, config: dict, stages: dict[str, str]) -> None:
    """Each checkpoint the model's config composes (its config class's STAGES: setting -> role) becomes the tiny
    checkpoint of that role the test has, where it has one."""
    for key, role in getattr(registry.config_class(name), "STAGES", {}).items():
        if role in stages:
            config["model"][key] = stages[role]


@pytest.mark.parametrize("path", TINY_CONFIGS, ids=lambda p: p.stem)
def test_builds_round_trips_and_answers_its_role(path, tmp_path, acoustic_decoder_run):
    name, config = tiny(path)
    with_stages(name, config, {ACOUSTIC_DECODER: str(acoustic_decoder_run)})
    role = registry.role_of(name)
    torch.manual_seed(0)
    model = registry.builder(name)(config["model"]).eval()
    before = smoke(model, role)
    folder = registry.save_checkpoint(model, {**config["model"], "model": name}, CARD, tmp_path / name)
    loaded, _, _ = registry.load_checkpoint(folder, "cpu")
    assert np.array_equal(smoke(loaded, role), before)


@pytest.mark.slow
@pytest.mark.parametrize("path", TINY_CONFIGS, ids=lambda p: p.stem)
def test_two_steps_train_with_finite_losses_and_resume(path, tmp_path, mini, sled_run, speaker_encoder_run,
                                                       acoustic_decoder_run):
    name, config = tiny(path)
    with_stages(name, config, {LATENT_CODEC: str(sled_run.parents[1] / "vae" / "export"),
                               SPEAKER_ENCODER: str(speaker_encoder_run), ACOUSTIC_DECODER: str(acoustic_decoder_run)})
    config["train"].update(steps=2, checkpoint_every=2, val_every=100, log_every=1)
    run = tmp_path / "run"
    state = Trainer(name, config, data=str(mini[0]), out=str(run), device="cpu", log=lambda _: None).run()
    assert state["step"] == 2
    rows = list(csv.DictReader(open(run / "log.csv")))
    losses = [float(v) for row in rows for k, v in row.items() if k not in ("step", "wall_time_s", "lr") and v]
    assert len(rows) == 2 and losses and all(math.isfinite(v) for v in losses)  # every logged loss term
    config["train"]["steps"] = 3
    state = Trainer(name, config, data=str(mini[0]), out=str(run), resume=True, device="cpu",
                    log=lambda _: None).run()
    assert state["step"] == 3


# ---------------------------------------------------------- a backend of every role, added by registering alone


@registry.register("identity_codec", role=LATENT_CODEC)
class IdentityCodec(torch.nn.Module):
    """The log-mel as the latent: the smallest latent codec there is."""

    sample_rate, frame_rate, latent_dim = audio.SAMPLE_RATE, audio.SAMPLE_RATE / 256, 80

    def __init__(self, config: dict):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(1))

    def encode_wav(self, wav):
        return (audio.mel_spectrogram(wav) * self.gain).T.detach().numpy(), None

    posterior_key = "identity"

    def posterior(self, mel):
        return mel * self.gain, torch.full_like(mel, -5.0)

    def decode_wav(self, latents, precision="fp32"):
        from models.vocoder import get_vocoder

        mel = torch.as_tensor(np.asarray(latents), dtype=torch.float32).T
        return get_vocoder("cpu", precision).synthesize(mel).numpy()

    def streaming_decoder(self, precision="fp32"):
        from models.vocoder import ChunkedDecoder

        return ChunkedDecoder(lambda mel: mel.T, 1, frame_context=0, frame_lookahead=0, precision=precision)


HOP = 256


def rms(wav: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(wav))) + 1e-8)


@registry.register("tone_tts_for_test", role=TTS)
class ToneTTS(torch.nn.Module):
    """A non-autoregressive TTS with no codec: the whole sentence at once, one tone per letter (its
    pitch from the letter and the `pitch` control, its length from the seed); the prompt is the
    reference's loudness."""

    CONTROLS = {"pitch": Control("Base pitch (Hz)", 80, 400, 220, 1)}
    CAPABILITIES = frozenset()
    codec = None

    @staticmethod
    def control_defaults(config: dict) -> dict[str, float]:  # a checkpoint may be trained for another pitch
        return {"pitch": config["pitch"]} if "pitch" in config else {}

    def __init__(self, config: dict):
        super().__init__()
        self.level = torch.nn.Parameter(torch.full((1,), 0.3))

    def encode_prompt(self, reference: np.ndarray) -> float:
        return rms(reference) * math.sqrt(2)

    def synthesize(self, request: TTSRequest, precision: str = "fp32") -> np.ndarray:
        rng = np.random.default_rng(request.seed)
        level = request.prompt if request.prompt is not None else float(self.level.detach())
        pieces = []
        for letter in (c for c in request.text.lower() if "a" <= c <= "z"):
            t = np.arange(int(SR * rng.uniform(0.05, 0.08))) / SR
            pieces.append(level * np.sin(2 * np.pi * request.controls["pitch"] * (1 + (ord(letter) - 97) / 26) * t))
        return np.concatenate(pieces).astype(np.float32) if pieces else np.zeros(0, np.float32)


def _frames(wav: np.ndarray, hop: int) -> np.ndarray:
    return wav[: len(wav) // hop * hop].reshape(-1, hop)


def _crossing_rate(frames: np.ndarray) -> np.ndarray:
    return np.abs(np.diff(np.sign(frames), axis=1)).sum(1) / 2 / frames.shape[1]


@registry.register("two_window_codec_for_test", role=TOKEN_CODEC)
class TwoWindowCodec(torch.nn.Module):
    """Two codebooks of 64: each frame's loudness and zero-crossing rate, over one or two hops (its
    windows), decoded as a sine of that loudness and frequency."""

    sample_rate, num_codebooks, codebook_size, windows = SR, 2, 64, (1, 2)

    def __init__(self, config: dict):
        super().__init__()
        self.unit = torch.nn.Parameter(torch.ones(1))

    def check_window(self, window: int | None) -> int:
        window = 1 if window is None else window
        if window not in self.windows:
            raise ValueError(f"window must be one of 1, 2, not {window}")
        return window

    def frame_rate_at(self, window: int | None = None) -> float:
        return SR / HOP / self.check_window(window)

    def bitrate_at(self, window: int | None = None) -> float:
        return self.frame_rate_at(window) * self.num_codebooks * math.log2(self.codebook_size)

    def encode_wav(self, wav: np.ndarray, window: int | None = None) -> np.ndarray:
        frames = _frames(wav, HOP * self.check_window(window))
        level = np.clip((np.log10(np.sqrt(np.mean(frames ** 2, 1)) + 1e-5) + 5) * 12, 0, 63)
        crossings = np.clip(_crossing_rate(frames) * 128, 0, 63)
        return np.stack([level, crossings]).astype(np.int64)

    def decode_tokens(self, tokens: np.ndarray, window: int | None = None) -> np.ndarray:
        hop = HOP * self.check_window(window)
        amplitude = np.repeat(10 ** (tokens[0] / 12 - 5) * math.sqrt(2), hop)
        crossings = tokens[1] if len(tokens) > 1 else np.full_like(tokens[0], 8)  # the first layer alone: one pitch
        frequency = np.repeat(np.maximum(crossings, 1) / 128 * SR, hop)
        return (amplitude * np.sin(2 * np.pi * np.cumsum(frequency) / SR)).astype(np.float32)

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        return (tokens.T / 63.0).astype(np.float32)


@registry.register("crossing_tokenizer_for_test", role=SEMANTIC_TOKENIZER)
class CrossingTokenizer(torch.nn.Module):
    """32 semantic tokens: the zero-crossing rate of each 512-sample frame, quantized."""

    sample_rate, frame_rate, vocabulary_size = SR, SR / 512, 32

    def __init__(self, config: dict):
        super().__init__()
        self.register_buffer("centroids", torch.linspace(0, 0.5, 32)[:, None])

    def features_wav(self, wavs: list[np.ndarray], sr: int = SR) -> list[torch.Tensor]:
        return [torch.from_numpy(_crossing_rate(_frames(audio.resample(w, sr, SR), 512))[:, None]).float()
                for w in wavs]

    def tokens_wav(self, wav: np.ndarray, sr: int = SR) -> np.ndarray:
        rate = self.features_wav([wav], sr)[0][:, 0]
        return (rate * 62).round().clamp(0, 31).long().numpy()

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.centroids[tokens]


@registry.register("level_decoder_for_test", role=ACOUSTIC_DECODER)
class LevelDecoder(torch.nn.Module):
    """Semantic tokens -> the two-window codec's tokens: the crossing rate from the semantic token, the
    loudness from the prompt (else the `level` control)."""

    CONTROLS = {"level": Control("Loudness token without a prompt", 0, 63, 40, 1)}

    def __init__(self, config: dict):
        super().__init__()
        self.codec, self.semantic_tokenizer = config["codec"], config["semantic_tokenizer"]
        self.unit = torch.nn.Parameter(torch.ones(1))

    def generate_tokens(self, semantic: np.ndarray, prompt, seed: int, controls: dict[str, float]) -> np.ndarray:
        crossings = np.clip(np.repeat(semantic, 2) * 4, 0, 63)  # two codec frames per semantic frame
        level = int(np.median(prompt.tokens[0])) if prompt is not None else int(controls["level"])
        return np.stack([np.full_like(crossings, level), crossings]).astype(np.int64)


@registry.register("level_match_for_test", role=SPEECH_TO_SPEECH)
class LevelMatch(torch.nn.Module):
    """The input at a gain (enhance), or brought to the voice clip's loudness (convert, extract); its
    checkpoints each serve the tasks their config lists."""

    CONTROLS = {"gain_db": Control("Gain (dB)", -12, 12, 0, 0.5)}

    def __init__(self, config: dict):
        super().__init__()
        self.tasks = tuple(config.get("tasks", ()))
        self.unit = torch.nn.Parameter(torch.ones(1))

    def transform(self, request: SpeechRequest) -> np.ndarray:
        gain = 10 ** (request.controls["gain_db"] / 20)
        if request.reference is not None:
            gain *= rms(request.reference) / rms(request.source)
        return (request.source * gain).astype(np.float32)


@registry.register("hum_vocoder_for_test", role=VOCODER)
class HumVocoder(torch.nn.Module):
    """A 150 Hz hum at each mel frame's loudness: the smallest mel vocoder there is."""

    n_mels, hop_length, receptive_frames = 80, HOP, 0

    def __init__(self, config: dict):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(1))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        level = mel.float().exp().mean(1).sqrt().repeat_interleave(self.hop_length, -1)  # (batch, samples)
        t = torch.arange(level.shape[-1], device=mel.device) / SR
        return (self.gain * level * torch.sin(2 * math.pi * 150 * t)).to(mel.dtype)


TEST_CHECKPOINTS = {  # name -> (class, config)
    "ident": (IdentityCodec, {"model": "identity_codec"}),
    "tone": (ToneTTS, {"model": "tone_tts_for_test"}),
    "twowin": (TwoWindowCodec, {"model": "two_window_codec_for_test"}),
    "crossings": (CrossingTokenizer, {"model": "crossing_tokenizer_for_test"}),
    "level": (LevelDecoder, {"model": "level_decoder_for_test", "codec": "twowin", "semantic_tokenizer": "crossings"}),
    "level_enhance": (LevelMatch, {"model": "level_match_for_test", "tasks": ["enhance"]}),
    "level_convert": (LevelMatch, {"model": "level_match_for_test", "tasks": ["convert"]}),
    "hum": (HumVocoder, {"model": "hum_vocoder_for_test"}),
}


@pytest.fixture
def test_backends(tmp_path, monkeypatch):
    """The checkpoint folder holds only the test-only backends, one (or two) per role."""
    monkeypatch.setattr(registry, "CHECKPOINT_DIR", tmp_path / "checkpoints")
    for name, (cls, config) in TEST_CHECKPOINTS.items():
        registry.save_checkpoint(cls(config), config, CARD, tmp_path / "checkpoints" / name)
    registry.release("model")
    yield tmp_path / "checkpoints"
    registry.release("model")
    for key in [k for k in registry._RESIDENT if k[:2] == ("vocoder", "hum")]:  # kept by name: not beyond this
        del registry._RESIDENT[key]  # folder (the session's HiFi-GAN stays resident)


@pytest.mark.parametrize("name", TEST_CHECKPOINTS)
def test_every_test_backend_round_trips_and_answers_its_role(name, test_backends):
    model, config, _ = registry.load_checkpoint(test_backends / name, "cpu")
    role = registry.role_of(config["model"])
    before = smoke(model, role)
    again, _, _ = registry.load_checkpoint(registry.save_checkpoint(model, config, CARD, test_backends / "copy"), "cpu")
    assert np.array_equal(smoke(again, role), before)


def test_a_declared_capability_needs_its_interface():
    class Claims(ToneTTS):
        CAPABILITIES = frozenset({STREAMING})

    with pytest.raises(TypeError, match="declares streaming but has no decode, frames, streaming_decoder"):
        check_declared("claims", TTS, Claims)
    Claims.CAPABILITIES = frozenset({"flying"})
    with pytest.raises(TypeError, match="unknown capabilities flying"):
        check_declared("claims", TTS, Claims)
    Claims.CAPABILITIES = frozenset({"voice_seeds"})
    with pytest.raises(TypeError, match="no voice_seed control"):
        check_declared("claims", TTS, Claims)


def test_every_role_appears_in_the_pipelines(test_backends, tmp_path):
    wav = tone(1.0, amp=0.3)
    # TTS that is neither autoregressive nor over a codec: offline, streamed (a sentence per chunk), prompted
    assert pipelines.available_tts_models() == ["tone"] and pipelines.tts_capabilities("tone") == frozenset()
    assert set(pipelines.tts_controls("tone")) == {"pitch"} and not pipelines.fits_voices("tone")
    out, info = pipelines.tts("Hi there. Bye now.", "tone", seed=4, pitch=300)
    assert info["codec"] is None and info["pitch"] == 300 and len(out) > 0.5 * SR
    chunks, _ = pipelines.tts("Hi there. Bye now.", "tone", seed=4, pitch=300, stream=True)
    assert np.array_equal(np.concatenate(list(chunks)), out)
    # the prompt is made like the corpus's clips first (levelled), unless asked not to
    loud, info = pipelines.tts("Hi.", "tone", ref_wav=tone(1.0, amp=0.9), ref_sr=SR, ref_text="a loud tone", seed=4)
    quiet, _ = pipelines.tts("Hi.", "tone", ref_wav=tone(1.0, amp=0.02), ref_sr=SR, ref_text="a quiet tone", seed=4)
    assert info["reference_levelled"] and np.abs(loud).max() < 0.3 and np.allclose(loud, quiet, atol=1e-3)
    loud, info = pipelines.tts("Hi.", "tone", ref_wav=tone(1.0, amp=0.9), ref_sr=SR, ref_text="a loud tone", seed=4,
                               level_reference=False)
    assert not info["reference_levelled"] and np.abs(loud).max() > 0.85
    with pytest.raises(ValueError, match="pitch must be between 80 and 400"):
        pipelines.tts("Hi.", "tone", pitch=900)
    with pytest.raises(ValueError, match="no test-time training"):
        pipelines.tts("Hi.", "tone", ref_wav=wav, ref_sr=SR, ref_text="a tone", ttt_samples=10)
    # the token codec at each of its windows, and its codes file
    assert pipelines.available_token_codecs() == ["twowin"] and pipelines.codec_windows("twowin") == (1, 2)
    assert pipelines.codec_bitrate("twowin", 2) == pipelines.codec_bitrate("twowin", 1) / 2
    for window in (1, 2):
        out, info = pipelines.reconstruct(wav, SR, "twowin", window=window)
        assert len(out) == len(wav) and info["bitrate"] == round(pipelines.codec_bitrate("twowin", window), 1)
    header = pipelines.encode_file(wav, SR, "twowin", tmp_path / "codes.npz", window=2)
    decoded, _ = pipelines.decode_file(tmp_path / "codes.npz")
    assert header["window"] == 2 and np.array_equal(decoded, pipelines.reconstruct(wav, SR, "twowin", window=2)[0])
    with pytest.raises(ValueError, match="window must be one of 1, 2"):
        pipelines.reconstruct(wav, SR, "twowin", window=3)
    # the two stages composed by name: semantic tokens -> the decoder -> the token codec
    out, info = pipelines.semantic_resynthesis(wav, SR, "level", seed=1, level=20)
    assert len(out) == len(wav) and info["codec"] == "twowin" and info["semantic_tokenizer"] == "crossings"
    prompted, _ = pipelines.semantic_resynthesis(wav, SR, "level", prompt=tone(1.0, amp=0.5), prompt_sr=SR, level=20)
    assert rms(prompted) > 10 * rms(out)  # the prompt's loudness, not the control's
    # speech to speech: the tasks come from each checkpoint's config, the controls from the class
    # (trained checkpoints first, so a trained backend is the default over the built-in baselines)
    assert pipelines.available_speech_models("enhance") == ["level_enhance", "wiener", "noisereduce", "deepfilternet"]
    assert pipelines.available_speech_models("convert") == ["level_convert", "knn_vc"]
    louder, info = pipelines.enhance(wav, SR, gain_db=6, seed=2)
    assert info == {"model": "level_enhance", "task": "enhance", "seed": 2, "gain_db": 6.0}
    assert np.isclose(rms(louder), rms(wav) * 10 ** (6 / 20), rtol=1e-3)
    converted, _ = pipelines.convert(wav, SR, tone(1.0, amp=0.1), SR)
    assert np.isclose(rms(converted), rms(tone(1.0, amp=0.1)), rtol=1e-3)
    with pytest.raises(ValueError, match="level_convert does not do speech-enhancement"):
        pipelines.enhance(wav, SR, model="level_convert")
    with pytest.raises(ValueError, match="no target-speaker-extraction backend is installed"):
        pipelines.extract(wav, SR, wav, SR)
    with pytest.raises(ValueError, match="has no setting 'pitch'"):
        pipelines.enhance(wav, SR, pitch=3)
    # a mel vocoder: a codec of its own (the mel round trip through it), and the decoder of every mel backend
    assert pipelines.available_vocoders() == ["hum"] and "hum" in pipelines.available_codecs()
    hummed, info = pipelines.reconstruct(wav, SR, "hum")
    assert info["vocoder"] == "hum" and len(hummed) == len(wav) // HOP * HOP
    from models.vocoder import use_vocoder

    with use_vocoder("hum"):
        assert np.allclose(pipelines.reconstruct(wav, SR, "vocoder")[0], hummed)
        assert np.allclose(IdentityCodec({}).decode_wav(pipelines.encode_latents(wav, SR)[0]), hummed, atol=1e-6)
    with pytest.raises(ValueError, match="'tone' is a tts checkpoint, not a vocoder"):
        pipelines.tts("Hi.", "tone", vocoder="tone")


def test_a_checkpoint_config_sets_its_control_defaults(test_backends):
    config = {"model": "tone_tts_for_test", "pitch": 120}
    registry.save_checkpoint(ToneTTS(config), config, CARD, test_backends / "tone_low")
    assert pipelines.tts_controls("tone_low")["pitch"].default == 120
    assert pipelines.tts_controls("tone")["pitch"].default == 220
    _, info = pipelines.tts("Hi.", "tone_low", seed=4)
    assert info["pitch"] == 120
    _, info = pipelines.tts("Hi.", "tone_low", seed=4, pitch=300)  # a request still sets its own
    assert info["pitch"] == 300


def test_every_role_appears_in_the_cli(test_backends, tmp_path, capsys):
    from studio import cli

    source = tmp_path / "in.wav"
    audio.save_audio(source, tone(1.0, amp=0.3))
    assert cli.main(["tts", "--model", "tone", "--text", "Hello.", "--pitch", "300", "--seed", "1",
                     "--out", str(tmp_path / "tone.wav")]) == 0
    assert '"pitch": 300' in capsys.readouterr().out
    assert cli.main(["tts", "--model", "tone", "--text", "Hello.", "--stop-threshold", "0.5",
                     "--out", str(tmp_path / "x.wav")]) == 2
    assert "the settings of tone: --pitch" in capsys.readouterr().err
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["tts"].format_help()
    assert "tone: --pitch 80-400 (default 220)" in help_text
    assert cli.main(["codec", "reconstruct", str(source), str(tmp_path / "w2.wav"), "--codec", "twowin",
                     "--window", "2"]) == 0
    assert "through twowin" in capsys.readouterr().out
    assert cli.main(["codec", "semantic", str(source), str(tmp_path / "s.wav"), "--decoder", "level",
                     "--level", "30"]) == 0
    assert '"level": 30' in capsys.readouterr().out
    assert cli.main(["speech", "enhance", str(source), str(tmp_path / "e.wav"), "--gain-db", "6"]) == 0
    assert '"model": "level_enhance"' in capsys.readouterr().out
    assert cli.main(["speech", "convert", str(source), str(tmp_path / "c.wav"), "--voice", str(source)]) == 0
    assert cli.main(["speech", "extract", str(source), str(tmp_path / "x.wav"), "--voice", str(source)]) == 2
    assert "no target-speaker-extraction backend" in capsys.readouterr().err
    assert cli.main(["--vocoder", "hum", "vocode", str(source), str(tmp_path / "v.wav")]) == 0
    assert "(hum)" in capsys.readouterr().out
    assert cli.main(["--vocoder", "tone", "vocode", str(source), str(tmp_path / "v2.wav")]) == 2
    assert "not a vocoder" in capsys.readouterr().err


def test_every_role_appears_in_the_evaluation_the_arena_and_the_studio(test_backends, tmp_path):
    from evaluation.systems import Item, parse_system
    from studio.app import build_app
    from studio.config import StudioConfig, default_systems
    from studio.tabs.listen import Arena

    source = tmp_path / "in.wav"
    audio.save_audio(source, tone(1.0, amp=0.3))
    item = Item("u1", text="one tone", reference=source, enrollment=source, input=source, prompt_text="a tone")
    for spec, kind in (("t=tone:pitch=300:seed=2", "tts"), ("c=twowin:window=2", "codec"), ("h=hum", "codec"),
                       ("tv=tone:vocoder=hum", "tts"),
                       ("e=level_enhance:gain_db=3:seed=1", "speech"), ("v=level_convert", "speech")):
        system = parse_system(spec)
        wav, sr, *_ = system.generator("cpu")(item)
        assert system.kind == kind and system.missing(item) is None and len(wav) and sr == SR
    for spec, message in (("t=tone:pitch=999", "pitch must be between 80 and 400"),
                          ("c=twowin:window=3", r"window must be one of \[1, 2\]"),
                          ("e=level_enhance:gain_db=30", "gain_db must be between -12 and 12"),
                          ("t=tone:vocoder=twowin", "not a vocoder")):
        with pytest.raises(ValueError, match=message):
            parse_system(spec)
    assert parse_system("v=level_convert").missing(Item("u2", input=source)) == "an enrollment clip"
    systems = default_systems()
    assert {"tone=tone", "twowin_w1=twowin:window=1", "twowin_w2=twowin:window=2", "ident=ident",
            "level_enhance=level_enhance", "level_convert=level_convert", "hum=hum"} <= set(systems)
    # the A/B arena draws from those systems: on a text prompt with audio, the TTS and the codecs apply
    (tmp_path / "set.jsonl").write_text(json.dumps({"id": "u1", "text": "one tone", "path": str(source)}) + "\n")
    config = StudioConfig(data_dir=tmp_path / "studio", testsets={"set": str(tmp_path / "set.jsonl")},
                          systems=systems)
    arena = Arena(config)
    assert {"tone", "twowin_w1", "ident"} <= {name for name, s in arena.systems.items()
                                              if s.applies_to(Item("u1", text="one tone", reference=source))}
    # every studio menu of a role lists its backend, and its declared control is a widget
    layout = build_app(config).get_config_file()
    props = [c.get("props", {}) for c in layout["components"]]
    menus = {p.get("label"): [choice[0] if isinstance(choice, (list, tuple)) else choice
                              for choice in p.get("choices") or []] for p in props if "choices" in p}
    assert "tone" in menus["Model (a checkpoint name, or a checkpoint folder)"]
    assert menus["Vocoder"] == ["hifigan", "hum"] and "hum" in menus["Codec"]
    assert {"twowin", "ident"} <= set(menus["Codec"]) and {"1", "2"} <= set(map(str, menus["Bitrate (window)"]))
    assert any(p.get("label") == "Base pitch (Hz)" and p.get("minimum") == 80 for p in props)


def test_a_registered_backend_appears_everywhere_without_other_edits(tmp_path, monkeypatch):
    from evaluation.systems import parse_system
    from studio.config import default_systems

    monkeypatch.setattr(registry, "CHECKPOINT_DIR", tmp_path)
    registry.save_checkpoint(IdentityCodec({}), {"model": "identity_codec"}, CARD, tmp_path / "ident")
    assert pipelines.available_latent_codecs() == ["ident"] and "ident" in pipelines.available_codecs()
    assert pipelines.available_tts_models() == []
    codec, _, _ = registry.load_model("ident", "cpu")
    mel, _ = codec.encode_wav(tone(1.0))
    decoder = codec.streaming_decoder()
    frames = list(torch.from_numpy(mel))
    streamed = np.concatenate([decoder.push(frames[:40]), decoder.push(frames[40:]), decoder.flush()])
    assert np.abs(streamed - codec.decode_wav(mel)).max() < 0.05 * np.abs(streamed).max()  # the generic chunking
    out, info = pipelines.reconstruct(tone(1.0), audio.SAMPLE_RATE, codec="ident", device="cpu")
    assert len(out) > 0.9 * audio.SAMPLE_RATE and info["codec"] == "ident"
    mean, std = pipelines.encode_latents(tone(1.0), audio.SAMPLE_RATE, codec="ident", device="cpu")
    assert mean.shape[1] == 80 and std is None
    assert parse_system("x=ident").kind == "codec"
    assert "ident=ident" in default_systems()
    with pytest.raises(ValueError, match="not a TTS model"):
        pipelines.tts("hello", model="ident")


def test_speech_to_speech_answers_until_a_backend_registers(tmp_path, monkeypatch):
    wav = tone(1.0)
    monkeypatch.setattr(registry, "CHECKPOINT_DIR", tmp_path)  # no checkpoint installed
    # enhancement and conversion have training-free baselines built in; extraction needs a trained model
    assert pipelines.enhance(wav, audio.SAMPLE_RATE, seed=0)[1]["model"] == "wiener"
    with pytest.raises(ValueError, match="no target-speaker-extraction backend is installed"):
        pipelines.extract(wav, audio.SAMPLE_RATE, wav, audio.SAMPLE_RATE)


def test_a_backend_that_fails_to_import_reports_its_real_error(tmp_path, monkeypatch):
    import models

    (tmp_path / "broken_backend_for_test.py").write_text("import a_package_that_is_not_installed\n")
    monkeypatch.setattr(models, "__path__", [*models.__path__, str(tmp_path)])  # as if it were models/<file>
    with pytest.raises(ModuleNotFoundError, match="a_package_that_is_not_installed"):
        registry.builder("broken_backend_for_test")
    with pytest.raises(KeyError, match="No model builder named 'no_such_backend'"):
        registry.builder("no_such_backend")
