"""The studio in a real browser: Debian's chromium, headless, driven by Playwright.

No browser is downloaded: Playwright launches /usr/bin/chromium. Screenshots land in
$STUDIO_ARTIFACTS (default: the test's tmp folder) so CI can keep them.
"""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("STUDIO_CHROMIUM", "/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).is_file() and not shutil.which("chromium"),
                       reason="Debian's chromium is not installed (apt-get install chromium)"),
]

# Gradio's audio player (wavesurfer) loads the file its download link points at; the page
# fetches and decodes that file and returns its peak: > 0 means real sound arrived.
AUDIO_FILE = "#tts-output a[data-testid=download-link]"
PEAK_OF_AUDIO = """
async (selector) => {
  const link = document.querySelector(selector);
  if (!link || !link.href) return -1;
  const data = await (await fetch(link.href)).arrayBuffer();
  const decoded = await new OfflineAudioContext(1, 1, 22050).decodeAudioData(data);
  return decoded.getChannelData(0).reduce((peak, x) => Math.max(peak, Math.abs(x)), 0);
}
"""


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory, sled_run):
    """The studio with the built-in test sets plus three tone prompts whose two A/B systems
    are files (no model runs); the tiny SLED's folder may be typed as a model."""
    from studio.bench import served, tone_testset
    from studio.config import default_testsets

    config = tone_testset(tmp_path_factory.mktemp("browser"), prompts=3)
    config.testsets.update(default_testsets())
    config.model_roots = [str(sled_run)]
    with served(config) as url:
        yield url


@pytest.fixture(scope="module")
def page(studio_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium"), headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage",
                  "--autoplay-policy=no-user-gesture-required"])
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.goto(studio_url, wait_until="load", timeout=120_000)
        page.get_by_role("tab", name="Synthesize").wait_for(timeout=120_000)
        yield page
        browser.close()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("STUDIO_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def synthesize_with(page, model_folder, text: str, button: str) -> None:
    """On the Synthesize tab: type a checkpoint folder as the model, the text, and press `button`."""
    page.get_by_role("tab", name="Synthesize").click()
    model = page.get_by_label("Model (a checkpoint name, or a checkpoint folder)")
    model.fill(str(model_folder))
    model.press("Enter")
    page.get_by_label("Text", exact=True).fill(text)
    page.get_by_role("button", name=button, exact=True).click()


def test_synthesize_plays_non_silent_audio(page, sled_run, artifacts):
    synthesize_with(page, sled_run, "Hello there, this is a browser test.", "Synthesize")
    try:
        page.wait_for_selector(AUDIO_FILE, state="attached", timeout=120_000)
    finally:
        page.screenshot(path=str(artifacts / "synthesize.png"), full_page=True)
        (artifacts / "synthesize.html").write_text(page.locator("#tts-output").inner_html())
    assert page.evaluate(PEAK_OF_AUDIO, AUDIO_FILE) > 0.001
    assert "stop_threshold" in page.locator("body").inner_text()  # the settings JSON is shown


def test_stream_plays_a_streamed_synthesis(page, sled_run, artifacts):
    """The Stream button through the served app: Gradio encodes the chunks with ffmpeg into a live
    playlist, and the page's player plays it to the end."""
    synthesize_with(page, sled_run, "Streaming starts before the sentence is done.", "Stream")
    played = """() => Array.from(document.querySelectorAll('#tts-stream audio'))
                     .some(a => a.duration > 0.3 && a.currentTime > 0.3)"""
    try:
        page.wait_for_selector("#tts-stream a[data-testid=download-link][href*='/stream/']", state="attached",
                               timeout=120_000)
        page.wait_for_function(played, timeout=120_000)
    finally:
        page.screenshot(path=str(artifacts / "stream.png"), full_page=True)
    assert "Error" not in page.locator("#tts-stream").inner_text()


def test_ab_vote_after_both_plays_updates_the_leaderboard(page, artifacts):
    page.get_by_role("tab", name="A/B listening").click()
    page.get_by_role("button", name="New pair").click()
    try:
        for side in ("a", "b"):
            page.wait_for_selector(f"#ab-{side} a[data-testid=download-link]", state="attached", timeout=60_000)
        vote = page.locator("#ab-vote-A")
        assert vote.is_disabled()  # locked until both clips were played
        for side in ("a", "b"):
            page.locator(f"#ab-{side}").get_by_role("button", name="Play", exact=True).click()
        vote.wait_for(state="visible")
        page.wait_for_function("() => !document.querySelector('#ab-vote-A').disabled", timeout=60_000)
        page.wait_for_timeout(1500)  # the server counts a vote after half the clips' length (two 1 s tones)
        vote.click()
        page.wait_for_function("() => document.querySelector('#ab-status').innerText.includes('Vote stored')",
                               timeout=30_000)
    finally:
        page.screenshot(path=str(artifacts / "ab_listening.png"), full_page=True)
    status = page.locator("#ab-status").inner_text()
    assert "A was" in status and "B was" in status
    board = page.locator("#ab-board").inner_text()
    assert "gt" in board and "other" in board


def test_small_evaluation_fills_the_results_table(page, artifacts):
    page.get_by_role("tab", name="Evaluate").click()
    for metric, wanted in (("wer", False), ("sim", False), ("stoi", True)):
        box = page.get_by_role("checkbox", name=metric, exact=True)
        if box.is_checked() != wanted:
            box.click()
    page.get_by_role("button", name="Run evaluation").click()
    try:
        page.wait_for_function("() => document.querySelector('#eval-status').innerText.includes('Done')",
                               timeout=120_000)
    finally:
        page.screenshot(path=str(artifacts / "evaluate.png"), full_page=True)
    table = page.locator("#eval-table").inner_text()
    assert "gt" in table and "other" in table and "stoi" in table


def test_saved_voices_stay_in_this_browser_and_only_this_one(page, studio_url, artifacts):
    """Saved on the page, the voice is in the menu after a reload and absent from another browser (a new
    context: its own storage)."""
    def open_voice_tools(tab):
        tab.get_by_role("tab", name="Synthesize").click()
        model = tab.get_by_label("Model (a checkpoint name, or a checkpoint folder)")
        model.fill("kalle")  # shipped, declares a voice seed: the voice tools show
        model.press("Enter")
        tab.get_by_role("button", name="Save voice").wait_for(state="visible", timeout=60_000)

    def menu(tab) -> str:
        tab.get_by_label("Saved voices").click()
        tab.wait_for_timeout(500)
        options = tab.get_by_role("option").all_inner_texts()
        tab.keyboard.press("Escape")
        return " | ".join(options)

    open_voice_tools(page)
    page.get_by_label("Name this voice").fill("Narrator One")
    page.get_by_role("button", name="Save voice").click()
    page.wait_for_function("() => [...document.querySelectorAll('input')].some(i => i.value === 'Narrator One' "
                           "&& i.closest('label, .block')?.innerText.includes('Saved voices'))", timeout=30_000)
    other = page.context.browser.new_context().new_page()
    try:
        page.reload(wait_until="load", timeout=120_000)
        other.goto(studio_url, wait_until="load", timeout=120_000)
        for tab in (page, other):
            open_voice_tools(tab)
        assert "Narrator One" in menu(page)
        assert "Narrator One" not in menu(other)
    finally:
        page.screenshot(path=str(artifacts / "saved_voices.png"), full_page=True)
        other.context.close()


@pytest.mark.parametrize("task, tab, button", [("convert", "Voice conversion", "Voice conversion"),
                                               ("enhance", "Enhancement", "Enhancement"),
                                               ("extract", "Speaker extraction", "Speaker extraction")])
def test_a_speech_tab_takes_an_uploaded_clip_and_plays_the_result(page, task, tab, button, artifacts):
    from studio.tabs.speech import EXAMPLES

    page.get_by_role("tab", name=tab, exact=True).click()
    files = EXAMPLES[task][0]
    for field, path in zip(("source", "voice"), files):
        page.locator(f"#{task}-{field} input[type=file]").set_input_files(path)
    page.get_by_role("button", name=button, exact=True).click()
    output = f"#{task}-output a[data-testid=download-link]"
    try:
        page.wait_for_selector(output, state="attached", timeout=120_000)
    finally:
        page.screenshot(path=str(artifacts / f"{task}.png"), full_page=True)
    assert page.evaluate(PEAK_OF_AUDIO, output) > 0.001
    assert "rtf" in page.locator("body").inner_text()  # the settings used, with the real-time factor

