import pytest

from models import audio
from tests.conftest import tone


@pytest.fixture(scope="session")
def served_studio(tmp_path_factory):
    """A served studio over three tone prompts (two file-backed A/B systems, no model runs), with a
    1 MB upload limit; and a 'secret' recording outside every folder the studio may read:
    (url, config, secret)."""
    from studio.bench import served, tone_testset

    config = tone_testset(tmp_path_factory.mktemp("served"), prompts=3)
    config.max_upload_mb = 1.0
    secret = tmp_path_factory.mktemp("private") / "secret.wav"
    audio.save_audio(secret, tone(1.0))
    with served(config) as url:
        yield url, config, secret
