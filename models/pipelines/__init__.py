"""One function per user-facing task. The studio and the CLI call these and nothing deeper.

Every function takes audio as (samples, sample_rate) arrays or a path, validates it, and returns audio
at models.audio.SAMPLE_RATE plus a dict of the settings it used. One module per concern: `common` (the
settings every request takes, the resident model of a role), `codecs` (menus, resynthesis, latent and
token views), `codes_file` (the .npz of a recording's codes), `synthesis` (TTS) and `fitted_voices` (test-time
training), `speech` (speech to speech, semantic resynthesis) and `batch` (resumable batch synthesis).
"""

from models.pipelines.batch import BATCH_RECORD, read_speech_inputs, read_tts_lines, speech_batch, tts_batch
from models.pipelines.codecs import (
    CODECS,
    available_codecs,
    available_latent_codecs,
    available_token_codecs,
    available_vocoders,
    codec_bitrate,
    codec_layers,
    codec_windows,
    encode_latents,
    encode_tokens,
    reconstruct,
)
from models.pipelines.codes_file import CODES_FORMAT, decode_file, encode_file
from models.pipelines.common import (
    CFG_RANGE,
    MAX_SEED,
    ROLE_NAMES,
    SETTINGS,
    TTS_VOCODER_PRECISION,
    TTT_LR,
    TTT_LR_RANGE,
    check_sampling,
    check_seed,
)
from models.pipelines.fitted_voices import MAX_FITTED_VOICES, TTT_CHECK_TEXTS, clear_fitted_voices, fit_voice
from models.pipelines.speech import (
    SPEECH_BASELINES,
    TASK_NAMES,
    acoustic_decoder_controls,
    available_acoustic_decoders,
    available_speech_models,
    checkpoint_tasks,
    convert,
    enhance,
    extract,
    semantic_resynthesis,
    speech_controls,
)
from models.pipelines.synthesis import (
    MAX_REFERENCE_SECONDS,
    MAX_REFERENCE_UPLOAD_SECONDS,
    MAX_TTS_CHARS,
    PAUSE_SECONDS,
    all_tts_controls,
    available_tts_models,
    cut_reference,
    fits_voices,
    prepare_reference,
    tts,
    tts_capabilities,
    tts_controls,
    tts_kind,
)
from models.vocoder import vocoder_names  # the TTS menus' choice: HiFi-GAN and every vocoder checkpoint

__all__ = [
    "BATCH_RECORD", "CFG_RANGE", "CODECS", "CODES_FORMAT", "MAX_FITTED_VOICES", "MAX_REFERENCE_SECONDS",
    "MAX_REFERENCE_UPLOAD_SECONDS", "MAX_SEED", "MAX_TTS_CHARS", "PAUSE_SECONDS", "ROLE_NAMES", "SETTINGS",
    "SPEECH_BASELINES", "TASK_NAMES", "TTS_VOCODER_PRECISION", "TTT_CHECK_TEXTS", "TTT_LR", "TTT_LR_RANGE",
    "acoustic_decoder_controls", "all_tts_controls", "available_acoustic_decoders", "available_codecs",
    "available_latent_codecs", "available_speech_models", "available_token_codecs", "available_tts_models",
    "available_vocoders", "check_sampling", "check_seed", "checkpoint_tasks", "clear_fitted_voices", "codec_bitrate",
    "codec_layers", "codec_windows", "convert", "cut_reference", "decode_file", "encode_file", "encode_latents",
    "encode_tokens", "enhance", "extract", "fit_voice", "fits_voices", "prepare_reference", "read_speech_inputs",
    "read_tts_lines", "reconstruct", "semantic_resynthesis", "speech_batch", "speech_controls", "tts", "tts_batch",
    "tts_capabilities", "tts_controls", "tts_kind", "vocoder_names",
]
