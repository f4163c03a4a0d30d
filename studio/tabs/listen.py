"""A/B listening: a blind pairwise test of the configured systems on test-set prompts, stored
durably in SQLite, with a Bradley-Terry leaderboard (evaluation.arena)."""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from evaluation.arena import OUTCOMES, VoteStore, choose_pair, leaderboard
from evaluation.systems import Item, System, parse_system, read_items
from models import audio
from models.registry import pick_device
from studio.common import gpu, served_copy, user_errors
from studio.config import StudioConfig

log = logging.getLogger(__name__)
RANDOM = "(random prompt)"
BUTTONS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad"}
BOARD_COLUMNS = ["rank", "system", "score", "ci_low", "ci_high", "win_rate", "votes", "provisional"]


class Arena:
    """The tab's state that outlives a page: systems, the vote store and the clip cache."""

    PROMPT_TRIES = 3  # random prompts tried before a new pair is refused

    def __init__(self, config: StudioConfig):
        self.config = config
        self.store = VoteStore(config.data_dir / "arena" / "votes.sqlite")
        self.clips = config.data_dir / "arena" / "clips"
        self.systems = {s.name: s for s in (parse_system(spec) for spec in config.systems)}
        self.rng = np.random.default_rng()
        self.lock = threading.Lock()  # numpy generators are not thread-safe
        self.items: dict[str, list[Item]] = {}
        self.failed: set[tuple[str, str, str]] = set()  # (test set, system, key) that gave no audio

    def testset_items(self, testset: str) -> list[Item]:
        if testset not in self.config.testsets:
            raise ValueError(f"unknown test set {testset!r}: one of {', '.join(self.config.testsets)}")
        if testset not in self.items:
            self.items[testset] = read_items(self.config.testsets[testset])
        return self.items[testset]

    def prompts(self, testset: str) -> list[str]:
        return [RANDOM] + [f"{item.key} | {item.text or ''}" for item in self.testset_items(testset)]

    def _clip(self, system: System, item: Item, testset: str) -> Path:
        """The system's audio for the item, cached (atomically) under the studio's private data folder:
        generated once, or copied from the manifest or folder. Listeners get opaque copies."""
        path = self.clips / testset / system.name / f"{item.key}.wav"
        if path.is_file():
            return path
        if system.generated:
            wav, sr, *_ = system.generator(pick_device())(item)
        else:
            wav, sr = audio.load_audio(system.audio_path(item, self.clips), max_seconds=None), audio.SAMPLE_RATE
        return audio.save_audio(path, wav, sr)

    def new_match(self, testset: str, prompt: str | None) -> dict:
        """A hidden pair on a prompt, both clips made before it is shown; the order is random and
        under-compared pairs come first. A system that fails on the prompt is logged and left out
        of this pair; a random prompt where fewer than two systems succeed gives way to another."""
        items = self.testset_items(testset)
        if prompt and prompt != RANDOM:
            key = prompt.split(" | ", 1)[0]
            items = [item for item in items if item.key == key]
            if not items:
                raise ValueError(f"no prompt {key!r} in test set {testset!r}")
        candidates = [item for item in items if sum(s.applies_to(item) for s in self.systems.values()) >= 2]
        if not candidates:
            raise ValueError(f"fewer than two A/B systems ({', '.join(self.systems)}) can give audio for "
                             f"{'this prompt' if len(items) == 1 else 'test set ' + repr(testset)}")
        with self.lock:
            order = [candidates[i] for i in self.rng.permutation(len(candidates))[:self.PROMPT_TRIES]]
        failures: list[str] = []
        for item in order:
            names = [name for name, s in self.systems.items() if s.applies_to(item)
                     and (testset, name, item.key) not in self.failed]
            while len(names) >= 2:
                with self.lock:
                    a, b = choose_pair(names, self.store.pair_votes(), self.rng)
                clips = {}
                for name in (a, b):
                    try:
                        clips[name] = self._clip(self.systems[name], item, testset)
                    except (ValueError, RuntimeError) as error:
                        log.warning("A/B: %s gave no audio for %s/%s: %s", name, testset, item.key, error)
                        failures.append(f"{name} on {item.key}: {error}")
                        self.failed.add((testset, name, item.key))
                        names.remove(name)
                        break
                if len(clips) == 2:
                    match = uuid.uuid4().hex
                    return {"match": match, "testset": testset, "key": item.key, "text": item.text, "a": a, "b": b,
                            "paths": [served_copy(clips[a]), served_copy(clips[b])], "played": [], "voted": None}
        raise ValueError("no pair could be made: fewer than two systems gave audio ("
                         + "; ".join(failures[:3]) + ")")

    def vote(self, match: dict | None, outcome: str) -> dict:
        """Record the listener's verdict once both clips were played; the match then reveals its pair."""
        if not match:
            raise ValueError("Start a comparison first (New pair)")
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        if set(match["played"]) != {"A", "B"}:
            raise ValueError("Play both clips before voting")
        if match["voted"] is None:
            self.store.add(match["match"], match["a"], match["b"], outcome, match["testset"], match["key"])
            match = {**match, "voted": outcome}
        return match

    def board(self) -> pd.DataFrame:
        return pd.DataFrame(leaderboard(self.store.votes(), bootstrap=100), columns=BOARD_COLUMNS)

    def export(self) -> str:
        path = self.config.data_dir / "arena" / "votes.csv"
        self.store.export_csv(path)
        return served_copy(path)


def played(match: dict | None, side: str) -> tuple:
    """Mark a clip as heard; the vote buttons unlock once both were (and stay locked after a vote)."""
    if match and side not in match["played"]:
        match = {**match, "played": match["played"] + [side]}
    ready = bool(match) and set(match["played"]) == {"A", "B"} and match["voted"] is None
    return match, *[gr.update(interactive=ready) for _ in BUTTONS]


def reveal(match: dict | None) -> str:
    if not match:
        return "Press **New pair** to hear two systems on one prompt."
    prompt = f"**Prompt** `{match['key']}`: {match['text'] or '(no text)'}"
    if match["voted"] is None:
        return prompt + "\n\nSystems are hidden until you vote. Play both clips to unlock voting."
    verdict = {"A": "you preferred A", "B": "you preferred B", "tie": "a tie", "both_bad": "both bad"}[match["voted"]]
    return prompt + f"\n\n**A** was `{match['a']}`, **B** was `{match['b']}` ({verdict}). Vote stored."


def build(config: StudioConfig) -> Arena:
    arena = Arena(config)
    testsets = list(config.testsets)

    @gpu
    def start(testset, prompt):
        match = arena.new_match(testset, prompt)
        return (*match["paths"], match, reveal(match), *[gr.update(interactive=False) for _ in BUTTONS])

    def cast(outcome):
        def handler(match):
            match = arena.vote(match, outcome)
            return match, reveal(match), arena.board(), *[gr.update(interactive=False) for _ in BUTTONS]

        handler.__name__ = f"vote_{outcome}"
        return handler

    with gr.Tab("A/B listening"):
        gr.Markdown("Blind comparison: two systems speak the same prompt, in random order. Play both, then vote; "
                    f"the systems are revealed afterwards. Systems: {', '.join(f'`{s}`' for s in arena.systems)}.")
        match = gr.State(None)
        with gr.Row():
            testset = gr.Dropdown(testsets, value=testsets[0] if testsets else None, label="Test set")
            prompt = gr.Dropdown(arena.prompts(testsets[0]) if testsets else [], value=RANDOM if testsets else None,
                                 label="Prompt")
            new = gr.Button("New pair", variant="primary")
        status = gr.Markdown(reveal(None), elem_id="ab-status")
        with gr.Row():
            clip_a = gr.Audio(label="A", type="filepath", interactive=False, elem_id="ab-a")
            clip_b = gr.Audio(label="B", type="filepath", interactive=False, elem_id="ab-b")
        with gr.Row():
            buttons = [gr.Button(label, interactive=False, elem_id=f"ab-vote-{outcome}")
                       for outcome, label in BUTTONS.items()]
        gr.Markdown("### Leaderboard\nBradley–Terry scores (Elo scale) with 95 % bootstrap intervals; ties and "
                    "'both bad' count half a win each. Systems with fewer than 10 votes are provisional.")
        board = gr.Dataframe(arena.board(), interactive=False, elem_id="ab-board")
        with gr.Row():
            export = gr.Button("Export votes (CSV)")
            refresh = gr.Button("Refresh leaderboard")
        votes_file = gr.File(label="Votes", interactive=False)

        testset.change(user_errors(lambda t: gr.update(choices=arena.prompts(t), value=RANDOM)), [testset],
                       [prompt], api_name="ab_prompts")
        new.click(user_errors(start), [testset, prompt], [clip_a, clip_b, match, status, *buttons],
                  api_name="ab_new_pair")
        clip_a.play(lambda m: played(m, "A"), [match], [match, *buttons], api_name="ab_played_a")
        clip_b.play(lambda m: played(m, "B"), [match], [match, *buttons], api_name="ab_played_b")
        for outcome, button in zip(BUTTONS, buttons):
            button.click(user_errors(cast(outcome)), [match], [match, status, board, *buttons],
                         api_name=f"ab_vote_{outcome}")
        refresh.click(arena.board, None, [board], api_name="ab_leaderboard")
        export.click(arena.export, None, [votes_file], api_name="ab_export")
    return arena
