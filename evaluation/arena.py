"""Listening tests: which pair to play next, the durable vote store, and the statistics
(win rates and Bradley-Terry scores with bootstrap CIs).

A vote compares system A with system B; its outcome is "A", "B", "tie" or "both_bad".
Ties and "both bad" count as half a win for each side (as Chatbot-Arena-style boards
do): neither system was preferred. Bradley-Terry models P(i beats j) = p_i / (p_i + p_j);
it is fitted with Hunter's (2004) minorization-maximization updates, and reported on an
Elo-like scale, 1000 + 400 log10(p_i) with the geometric mean of p at 1.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.files import write_text_atomic

OUTCOMES = {"A": (1.0, 0.0), "B": (0.0, 1.0), "tie": (0.5, 0.5), "both_bad": (0.5, 0.5)}
PRIOR = 0.5  # pseudo-wins each way per compared pair: keeps unbeaten systems finite


@dataclass(frozen=True)
class Vote:
    system_a: str
    system_b: str
    outcome: str  # one of OUTCOMES

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r} (one of {', '.join(OUTCOMES)})")
        if self.system_a == self.system_b:
            raise ValueError(f"a vote compares two different systems, got {self.system_a!r} twice")


def _tables(votes: list[Vote], systems: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """wins[i, j]: (half-)wins of i over j; games[i, j]: comparisons between i and j."""
    index = {s: k for k, s in enumerate(systems)}
    wins = np.zeros((len(systems), len(systems)))
    for vote in votes:
        a, b = index[vote.system_a], index[vote.system_b]
        score_a, score_b = OUTCOMES[vote.outcome]
        wins[a, b] += score_a
        wins[b, a] += score_b
    return wins, wins + wins.T


def bradley_terry(votes: list[Vote], systems: list[str], iterations: int = 500, tol: float = 1e-9) -> np.ndarray:
    """Elo-scale strengths of `systems` (in that order) from the votes."""
    wins, games = _tables(votes, systems)
    compared = games > 0
    wins, games = wins + PRIOR * compared, games + 2 * PRIOR * compared
    p = np.ones(len(systems))
    for _ in range(iterations):
        denominators = (games / (p[:, None] + p[None, :])).sum(axis=1)
        updated = np.where(denominators > 0, wins.sum(axis=1) / np.maximum(denominators, 1e-300), p)
        updated /= np.exp(np.mean(np.log(updated)))
        if np.max(np.abs(updated - p)) < tol:
            p = updated
            break
        p = updated
    return 1000.0 + 400.0 * np.log10(p)


def leaderboard(votes: list[Vote], bootstrap: int = 200, min_votes: int = 10, seed: int = 0,
                confidence: float = 0.95, ci_min_votes: int = 5) -> list[dict]:
    """One row per system, ranked by the CI's lower bound; systems under min_votes last. A system with
    fewer than ci_min_votes votes has no interval (NaN): resampling a vote or two gives the score itself."""
    if not votes:
        return []
    systems = sorted({v.system_a for v in votes} | {v.system_b for v in votes})
    scores = bradley_terry(votes, systems)
    rng = np.random.default_rng(seed)
    samples = np.array([bradley_terry([votes[i] for i in rng.integers(0, len(votes), len(votes))], systems)
                        for _ in range(bootstrap)]) if bootstrap else scores[None, :]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
    wins, games = _tables(votes, systems)
    few = games.sum(axis=1) < ci_min_votes
    low, high = np.where(few, np.nan, low), np.where(few, np.nan, high)
    rows = [{"system": s, "score": round(float(scores[k]), 1), "ci_low": round(float(low[k]), 1),
             "ci_high": round(float(high[k]), 1), "win_rate": round(float(wins[k].sum() / games[k].sum()), 4),
             "votes": int(games[k].sum()), "provisional": bool(games[k].sum() < min_votes)}
            for k, s in enumerate(systems)]
    rows.sort(key=lambda r: (r["provisional"], -np.nan_to_num(r["ci_low"], nan=-np.inf), -r["score"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows


def choose_pair(systems: list[str], pair_votes: dict[frozenset, int], rng: np.random.Generator) -> tuple[str, str]:
    """Two different systems in random order, a pair drawn with weight 1 / (1 + its votes so far),
    so that under-compared pairs catch up."""
    if len(set(systems)) < 2:
        raise ValueError(f"A/B needs at least two systems, got {sorted(set(systems))}")
    names = sorted(set(systems))
    pairs = [(a, b) for k, a in enumerate(names) for b in names[k + 1:]]
    weights = np.array([1.0 / (1 + pair_votes.get(frozenset(p), 0)) for p in pairs])
    a, b = pairs[rng.choice(len(pairs), p=weights / weights.sum())]
    return (a, b) if rng.random() < 0.5 else (b, a)


class VoteStore:
    """Votes in SQLite: one row per match, written in its own transaction before the vote is
    acknowledged (WAL journal, synchronous=FULL), so a crash loses nothing acknowledged.

    Each match (one pair of clips shown to one listener) has an id; a second vote on the same
    match (a double click, a retried request) is ignored, so votes are never duplicated. One
    connection per call keeps it safe across threads and processes.
    """

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS votes (
        match_id TEXT PRIMARY KEY,
        created REAL NOT NULL,
        testset TEXT,
        item_key TEXT,
        system_a TEXT NOT NULL,
        system_b TEXT NOT NULL,
        outcome TEXT NOT NULL
    )"""
    COLUMNS = ("match_id", "created", "testset", "item_key", "system_a", "system_b", "outcome")

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(self.SCHEMA)

    def _connect(self):
        db = sqlite3.connect(self.path, timeout=60)
        db.execute("PRAGMA synchronous=FULL")
        return db

    def add(self, match_id: str, system_a: str, system_b: str, outcome: str, testset: str | None = None,
            item_key: str | None = None) -> bool:
        """Store one vote; False when this match already has one (the first vote stands)."""
        Vote(system_a, system_b, outcome)  # validates
        db = self._connect()
        try:
            with db:
                cursor = db.execute("INSERT OR IGNORE INTO votes VALUES (?, ?, ?, ?, ?, ?, ?)",
                                    (match_id, time.time(), testset, item_key, system_a, system_b, outcome))
            return cursor.rowcount == 1
        finally:
            db.close()

    def rows(self) -> list[dict]:
        db = self._connect()
        try:
            return [dict(zip(self.COLUMNS, row)) for row in db.execute(
                f"SELECT {', '.join(self.COLUMNS)} FROM votes ORDER BY created, match_id")]
        finally:
            db.close()

    def votes(self) -> list[Vote]:
        return [Vote(r["system_a"], r["system_b"], r["outcome"]) for r in self.rows()]

    def pair_votes(self) -> dict[frozenset, int]:
        counts: dict[frozenset, int] = {}
        for vote in self.votes():
            pair = frozenset((vote.system_a, vote.system_b))
            counts[pair] = counts.get(pair, 0) + 1
        return counts

    def export_csv(self, path) -> None:
        """Every vote as CSV (written to a temp file, then renamed)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows())
        write_text_atomic(path, buffer.getvalue())
