import numpy as np
import pytest

from evaluation.arena import Vote, bradley_terry, leaderboard

STRENGTHS = {"gt": 2.0, "sled": 1.0, "kalle": 0.0, "noise": -1.5}  # log-odds scale


def simulate(n: int, seed: int = 0, tie_rate: float = 0.1) -> list[Vote]:
    rng = np.random.default_rng(seed)
    names = list(STRENGTHS)
    votes = []
    for _ in range(n):
        a, b = rng.choice(names, size=2, replace=False)
        if rng.random() < tie_rate:
            votes.append(Vote(a, b, "tie"))
            continue
        p_a = 1 / (1 + np.exp(STRENGTHS[b] - STRENGTHS[a]))
        votes.append(Vote(a, b, "A" if rng.random() < p_a else "B"))
    return votes


def test_recovers_the_order_of_known_strengths():
    board = leaderboard(simulate(3000), bootstrap=100)
    assert [r["system"] for r in board] == ["gt", "sled", "kalle", "noise"]
    assert all(r["ci_low"] <= r["score"] <= r["ci_high"] for r in board)


def test_recovers_the_size_of_known_gaps():
    """Without ties (which pull scores together), the fitted gaps are the true log-odds
    gaps on the Elo scale (x 400 / ln 10)."""
    systems = list(STRENGTHS)
    scores = bradley_terry(simulate(6000, seed=1, tie_rate=0.0), systems)
    true = np.array([STRENGTHS[s] for s in systems]) * 400 / np.log(10)
    assert np.max(np.abs((scores - scores.mean()) - (true - true.mean()))) < 40


def test_equal_systems_tie_and_symmetry():
    votes = [Vote("x", "y", "A"), Vote("x", "y", "B")] * 20
    scores = bradley_terry(votes, ["x", "y"])
    assert abs(scores[0] - scores[1]) < 1e-6 and abs(scores.mean() - 1000) < 1e-6


def test_unbeaten_system_stays_finite_and_win_rates():
    votes = [Vote("a", "b", "A")] * 12 + [Vote("a", "b", "both_bad")] * 4
    board = {r["system"]: r for r in leaderboard(votes, bootstrap=20)}
    assert np.isfinite(board["a"]["score"]) and board["a"]["score"] > board["b"]["score"]
    assert board["a"]["win_rate"] == pytest.approx(14 / 16) and board["b"]["votes"] == 16


def test_min_votes_marks_provisional_and_ranks_last():
    votes = simulate(400) + [Vote("newcomer", "noise", "A")] * 3
    board = leaderboard(votes, bootstrap=20, min_votes=10)
    assert board[-1]["system"] == "newcomer" and board[-1]["provisional"]
    assert [r["rank"] for r in board] == list(range(1, len(board) + 1))


def test_bad_votes_are_refused():
    with pytest.raises(ValueError, match="unknown outcome"):
        Vote("a", "b", "maybe")
    with pytest.raises(ValueError, match="two different systems"):
        Vote("a", "a", "A")
    assert leaderboard([]) == []


def test_choose_pair_prefers_pairs_with_fewer_votes():
    from evaluation.arena import choose_pair

    rng = np.random.default_rng(0)
    counts = {frozenset(("a", "b")): 50}
    drawn = [frozenset(choose_pair(["a", "b", "c"], counts, rng)) for _ in range(3000)]
    often = drawn.count(frozenset(("a", "b"))) / len(drawn)
    assert often < 0.05  # weight 1/51 against 1 and 1: about 1 %
    orders = [choose_pair(["a", "b"], {}, rng) for _ in range(400)]
    assert 150 < sum(o == ("a", "b") for o in orders) < 250  # order is random
    with pytest.raises(ValueError, match="at least two systems"):
        choose_pair(["a", "a"], {}, rng)


def test_vote_store_survives_reopening_and_ignores_a_second_vote_on_a_match(tmp_path):
    import csv

    from evaluation.arena import VoteStore

    store = VoteStore(tmp_path / "votes.sqlite")
    assert store.add("m1", "gt", "sled", "A", "set", "k1")
    assert not store.add("m1", "gt", "sled", "B", "set", "k1")  # double click / retry
    assert store.add("m2", "sled", "gt", "tie")
    with pytest.raises(ValueError, match="unknown outcome"):
        store.add("m3", "gt", "sled", "maybe")
    reopened = VoteStore(tmp_path / "votes.sqlite")
    assert [(v.system_a, v.outcome) for v in reopened.votes()] == [("gt", "A"), ("sled", "tie")]
    assert reopened.pair_votes() == {frozenset(("gt", "sled")): 2}
    reopened.export_csv(tmp_path / "votes.csv")
    rows = list(csv.DictReader(open(tmp_path / "votes.csv")))
    assert [r["match_id"] for r in rows] == ["m1", "m2"] and rows[0]["item_key"] == "k1"


def test_vote_store_under_concurrent_writers(tmp_path):
    """20 threads, each voting 10 matches twice: exactly 200 rows, none lost or doubled."""
    from concurrent.futures import ThreadPoolExecutor

    from evaluation.arena import VoteStore

    store = VoteStore(tmp_path / "votes.sqlite")

    def voter(n):
        return sum(store.add(f"v{n}-{k}", "x", "y", "A") + store.add(f"v{n}-{k}", "x", "y", "B") for k in range(10))

    with ThreadPoolExecutor(20) as pool:
        accepted = sum(pool.map(voter, range(20)))
    rows = store.rows()
    assert accepted == 200 and len(rows) == 200 and len({r["match_id"] for r in rows}) == 200
    assert all(r["outcome"] == "A" for r in rows)


def test_a_vote_or_two_give_no_interval():
    """Resampling one vote always gives the same score: an interval of zero width would claim a certainty
    that one vote cannot give, so there is none until a system has ci_min_votes votes."""
    board = leaderboard([Vote("x", "y", "A")], bootstrap=50)
    assert all(np.isnan(r["ci_low"]) and np.isnan(r["ci_high"]) for r in board)
    assert [r["system"] for r in board] == ["x", "y"]
    board = leaderboard(simulate(40), bootstrap=50, ci_min_votes=5)
    assert all(r["ci_low"] < r["ci_high"] for r in board)
