"""Listening-test statistics: win rates and Bradley-Terry scores with bootstrap CIs.

A vote compares system A with system B; its outcome is "A", "B", "tie" or "both_bad".
Ties and "both bad" count as half a win for each side (as Chatbot-Arena-style boards
do): neither system was preferred. Bradley-Terry models P(i beats j) = p_i / (p_i + p_j);
it is fitted with Hunter's (2004) minorization-maximization updates, and reported on an
Elo-like scale, 1000 + 400 log10(p_i) with the geometric mean of p at 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
                confidence: float = 0.95) -> list[dict]:
    """One row per system, ranked by the CI's lower bound; systems under min_votes last."""
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
    rows = [{"system": s, "score": round(float(scores[k]), 1), "ci_low": round(float(low[k]), 1),
             "ci_high": round(float(high[k]), 1), "win_rate": round(float(wins[k].sum() / games[k].sum()), 4),
             "votes": int(games[k].sum()), "provisional": bool(games[k].sum() < min_votes)}
            for k, s in enumerate(systems)]
    rows.sort(key=lambda r: (r["provisional"], -r["ci_low"], -r["score"]))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    return rows
