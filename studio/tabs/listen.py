"""A/B listening: a blind pairwise test of the configured systems on test-set prompts, stored
durably in SQLite, with a Bradley-Terry leaderboard (evaluation.arena)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import pandas as pd

from evaluation.arena import OUTCOMES, VoteStore, choose_pair, leaderboard
from evaluation.systems import Item, System, parse_system, read_items
from models import audio
from models.registry import pick_device
from studio.common import gpu, served_audio, served_copy, user_errors, visitor, visitor_address
from studio.config import StudioConfig

log = logging.getLogger(__name__)
RANDOM = "(random prompt)"
BUTTONS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad"}
BOARD_COLUMNS = ["rank", "system", "score", "ci_low", "ci_high", "win_rate", "votes", "provisional"]
SERVED_GAIN_DB = 0.5  # each serving of a clip gets its own gain within +-this (and dither): never the same bytes
MATCH_TTL_S = 3600.0  # an unvoted pair is forgotten after this


@dataclass
class Listening:
    """The server's record of one pair shown to one visitor: what the page's state cannot vouch for."""

    visitor: str
    seconds: float  # the two clips' total length
    played: dict[str, float] = field(default_factory=dict)  # side -> when it was first played
    voted: str | None = None
    created: float = 0.0


def vary(wav: np.ndarray, rng: np.random.Generator, gain_db: float) -> np.ndarray:
    """The clip as served once: the pair's random gain (one for both clips, so neither is louder than it
    was) and triangular dither of one 16-bit step, both below audibility, so no two servings share bytes
    (or a cache name derived from them)."""
    dither = (rng.random(len(wav)) - rng.random(len(wav))) / 32768
    return (wav * 10 ** (gain_db / 20) + dither).astype(np.float32)


@gpu
def generate_clip(system: System, item: Item) -> tuple[np.ndarray, int]:
    """A generated system's audio for an item (on a ZeroGPU Space, in the GPU worker: only this runs there,
    so the pair's record stays in the server process)."""
    wav, sr, *_ = system.generator(pick_device())(item)
    return wav, sr


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
        self.matches: dict[str, Listening] = {}
        self.last_vote: dict[str, float] = {}  # visitor -> time of their last vote
        self.address_votes: dict[str, deque] = {}  # network address -> times of its votes in the last hour
        self.clock = time.time

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
            wav, sr = generate_clip(system, item)
        else:
            wav, sr = audio.load_audio(system.audio_path(item, self.clips), max_seconds=None), audio.SAMPLE_RATE
        return audio.save_audio(path, wav, sr)

    def new_match(self, testset: str, prompt: str | None, visitor: str = "") -> dict:
        """A hidden pair on a prompt for one visitor, both clips made before it is shown; the order is random
        and under-compared pairs come first. A system that fails on the prompt is logged and left out
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
                    return self._serve(testset, item, a, b, clips, visitor)
        raise ValueError("no pair could be made: fewer than two systems gave audio ("
                         + "; ".join(failures[:3]) + ")")

    def _serve(self, testset: str, item: Item, a: str, b: str, clips: dict[str, Path], visitor: str) -> dict:
        wavs = {name: audio.load_audio(clips[name], audio.SAMPLE_RATE, max_seconds=None) for name in (a, b)}
        with self.lock:
            gain_db = self.rng.uniform(-SERVED_GAIN_DB, SERVED_GAIN_DB)
            paths = [served_audio(vary(wavs[name], self.rng, gain_db), audio.SAMPLE_RATE) for name in (a, b)]
            now = self.clock()
            for old in [m for m, record in self.matches.items() if now - record.created > MATCH_TTL_S]:
                del self.matches[old]
            match = uuid.uuid4().hex
            seconds = sum(len(w) for w in wavs.values()) / audio.SAMPLE_RATE
            self.matches[match] = Listening(visitor, seconds, created=now)
        # A speech-to-speech item: the listener hears what both systems were given (and the voice they were to
        # take) before the two outputs; these are no system's output, so served as they are.
        given = [served_audio(audio.load_audio(path, audio.SAMPLE_RATE, max_seconds=None), audio.SAMPLE_RATE)
                 if path is not None and item.input is not None else None for path in (item.input, item.enrollment)]
        return {"match": match, "testset": testset, "key": item.key, "text": item.text, "a": a, "b": b,
                "paths": paths, "given": given, "played": [], "voted": None}

    def _record(self, match: dict | None, visitor: str) -> Listening:
        if not match:
            raise ValueError("Start a comparison first (New pair)")
        record = self.matches.get(match["match"])
        if record is None or record.visitor != visitor:
            raise ValueError("This pair has expired or was not served to you: press New pair")
        return record

    def play(self, match: dict | None, side: str, visitor: str = "") -> dict | None:
        """The server notes when this visitor first played a side of their pair."""
        if not match:
            return match
        record = self._record(match, visitor)
        with self.lock:
            record.played.setdefault(side, self.clock())
        return {**match, "played": sorted(record.played)}

    def ready(self, match: dict | None, visitor: str = "") -> bool:
        record = self.matches.get(match["match"]) if match else None
        return bool(record) and record.visitor == visitor and set(record.played) == {"A", "B"} and not record.voted

    def vote(self, match: dict | None, outcome: str, visitor: str = "", address: str = "") -> dict:
        """Record the visitor's verdict on their pair once both clips were played and listened to (the
        server's clock), within the vote rate limits; the match then reveals its pair. A second vote
        on a pair changes nothing and says so."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        record = self._record(match, visitor)
        rules, now = self.config, self.clock()
        with self.lock:  # the checks, the store and the record change together: two clicks count once
            if record.voted is not None:
                return {**match, "voted": record.voted, "repeat": True}
            if set(record.played) != {"A", "B"}:
                raise ValueError("Play both clips before voting")
            listened = now - min(record.played.values())
            if listened < rules.arena_min_listen * record.seconds:
                raise ValueError(f"Listen to both clips before voting ({listened:.1f} s since the first play; "
                                 f"the two last {record.seconds:.1f} s)")
            if now - self.last_vote.get(visitor, -np.inf) < rules.arena_vote_gap_s:
                raise ValueError(f"One vote every {rules.arena_vote_gap_s:g} s, please: try again in a moment")
            recent = self.address_votes.setdefault(address, deque())
            while recent and now - recent[0] > 3600:
                recent.popleft()
            if len(recent) >= rules.arena_votes_per_hour:
                raise ValueError(f"This network has cast {rules.arena_votes_per_hour} votes in the last hour, the "
                                 "most the arena takes: please come back later")
            self.store.add(match["match"], match["a"], match["b"], outcome, match["testset"], match["key"])
            record.voted = outcome
            self.last_vote[visitor] = now
            recent.append(now)
            if len(self.last_vote) > 1000:  # forget visitors and addresses idle for an hour
                self.last_vote = {v: t for v, t in self.last_vote.items() if now - t < 3600}
                self.address_votes = {a: q for a, q in self.address_votes.items() if q and now - q[-1] < 3600}
        return {**match, "voted": outcome}

    def board(self) -> pd.DataFrame:
        return pd.DataFrame(leaderboard(self.store.votes(), bootstrap=100), columns=BOARD_COLUMNS)

    def export(self) -> str:
        path = self.config.data_dir / "arena" / "votes.csv"
        self.store.export_csv(path)
        return served_copy(path)


def lock_state(ready: bool) -> list:
    """The vote buttons: unlocked once both clips were played (and locked again after the vote)."""
    return [gr.update(interactive=ready) for _ in BUTTONS]


def reveal(match: dict | None) -> str:
    if not match:
        return "Press **New pair** to hear two systems on one prompt."
    prompt = f"**Prompt** `{match['key']}`: {match['text'] or '(no text)'}"
    if match["voted"] is None:
        return prompt + "\n\nSystems are hidden until you vote. Play both clips to unlock voting."
    verdict = {"A": "you preferred A", "B": "you preferred B", "tie": "a tie", "both_bad": "both bad"}[match["voted"]]
    stored = ("You already voted on this pair: the first vote stands." if match.get("repeat") else "Vote stored.")
    return prompt + f"\n\n**A** was `{match['a']}`, **B** was `{match['b']}` ({verdict}). {stored}"


def build(config: StudioConfig) -> Arena:
    arena = Arena(config)
    testsets = list(config.testsets)

    def start(testset, prompt, request: gr.Request):
        match = arena.new_match(testset, prompt, visitor(request))
        given = [gr.update(value=path, visible=path is not None) for path in match["given"]]
        return (*match["paths"], match, reveal(match), *lock_state(False), *given)

    def heard(side):
        def handler(match, request: gr.Request):
            match = arena.play(match, side, visitor(request))
            return match, *lock_state(arena.ready(match, visitor(request)))

        handler.__name__ = f"played_{side.lower()}"
        return handler

    def cast(outcome):
        def handler(match, request: gr.Request):
            match = arena.vote(match, outcome, visitor(request), visitor_address(request))
            return match, reveal(match), arena.board(), *lock_state(False)

        handler.__name__ = f"vote_{outcome}"
        return handler

    with gr.Tab("A/B listening"):
        gr.Markdown("Blind comparison: two systems speak the same prompt, in random order. Play both, then vote; "
                    f"the systems are revealed afterwards. Systems: {', '.join(f'`{s}`' for s in arena.systems)}.")
        match = gr.State(None)
        with gr.Row():
            testset = gr.Dropdown(testsets, value=testsets[0] if testsets else None, label="Test set")
            prompt = gr.Dropdown(arena.prompts(testsets[0]) if testsets else [], value=RANDOM if testsets else None,
                                 label="Prompt", allow_custom_value=True)  # any test set's: new_match checks it
            new = gr.Button("New pair", variant="primary")
        status = gr.Markdown(reveal(None), elem_id="ab-status")
        with gr.Row():  # for a speech-to-speech test set: what the two systems were given
            given = [gr.Audio(label="Input (what both systems were given)", type="filepath", interactive=False,
                              visible=False, elem_id="ab-input"),
                     gr.Audio(label="Voice clip (the voice to take, or the speaker to keep)", type="filepath",
                              interactive=False, visible=False, elem_id="ab-voice")]
        with gr.Row():
            clip_a = gr.Audio(label="A", type="filepath", interactive=False, elem_id="ab-a")
            clip_b = gr.Audio(label="B", type="filepath", interactive=False, elem_id="ab-b")
        with gr.Row():
            buttons = [gr.Button(label, interactive=False, elem_id=f"ab-vote-{outcome}")
                       for outcome, label in BUTTONS.items()]
        gr.Markdown("### Leaderboard\nBradley–Terry scores (Elo scale) with 95 % bootstrap intervals; ties and "
                    "'both bad' count half a win each. Intervals appear once a system has 5 votes; systems with "
                    "fewer than 10 votes are provisional.")
        board = gr.Dataframe(arena.board(), interactive=False, elem_id="ab-board")
        with gr.Row():
            export = gr.Button("Export votes (CSV)")
            refresh = gr.Button("Refresh leaderboard")
        votes_file = gr.File(label="Votes", interactive=False)

        testset.change(user_errors(lambda t: gr.update(choices=arena.prompts(t), value=RANDOM)), [testset],
                       [prompt], api_name="ab_prompts")
        new.click(user_errors(start), [testset, prompt], [clip_a, clip_b, match, status, *buttons, *given],
                  api_name="ab_new_pair")  # the input players last: clients that read outputs by position keep working
        clip_a.play(user_errors(heard("A")), [match], [match, *buttons], api_name="ab_played_a")
        clip_b.play(user_errors(heard("B")), [match], [match, *buttons], api_name="ab_played_b")
        for outcome, button in zip(BUTTONS, buttons):
            button.click(user_errors(cast(outcome)), [match], [match, status, board, *buttons],
                         api_name=f"ab_vote_{outcome}")
        refresh.click(arena.board, None, [board], api_name="ab_leaderboard")
        export.click(arena.export, None, [votes_file], api_name="ab_export")
    return arena
