"""The matchmaking rules (examples/game/matchmaking.py), with the clock passed in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.game.matchmaking import BAND, FILL_WAIT, WIDEN_EVERY, Matchmaker, QueueFull


def users(made: list[list[object]]) -> list[list[str]]:
    return [[p.user_id for p in group] for group in made]  # type: ignore[attr-defined]


def test_a_full_match_is_made_at_once_from_one_band() -> None:
    mm = Matchmaker(min_players=2, max_players=3)
    for i, name in enumerate(["a", "b", "x", "c"]):
        mm.join(name, 10 * BAND if name == "x" else 1000 + i, now=0.0)
    assert users(mm.poll(now=0.0)) == [["a", "b", "c"]]
    assert list(mm.waiting) == ["x"]


def test_a_smaller_match_waits_for_the_fill_time() -> None:
    mm = Matchmaker(min_players=2, max_players=8)
    mm.join("a", 1000, now=0.0)
    mm.join("b", 1010, now=1.0)
    assert mm.poll(now=FILL_WAIT - 0.1) == []
    assert users(mm.poll(now=FILL_WAIT)) == [["a", "b"]]


def test_waiting_widens_the_bands_accepted() -> None:
    mm = Matchmaker(min_players=2, max_players=2)
    mm.join("low", 0, now=0.0)
    mm.join("high", 2 * BAND, now=0.0)  # two bands apart
    assert mm.poll(now=WIDEN_EVERY) == []  # one band each way: not yet
    assert users(mm.poll(now=2 * WIDEN_EVERY)) == [["low", "high"]]


def test_the_queue_is_bounded_and_a_player_is_queued_once() -> None:
    mm = Matchmaker(max_waiting=2)
    assert mm.join("a", 1, 0.0) and not mm.join("a", 1, 0.0)
    mm.join("b", 1, 0.0)
    with pytest.raises(QueueFull, match="2 players"):
        mm.join("c", 1, 0.0)
    assert mm.position("b") == 2 and mm.leave("a") and mm.position("b") == 1
    assert mm.position("a") == 0


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3000), st.floats(0, 30)), min_size=1, max_size=40),
    st.integers(2, 4),
    st.integers(0, 4),
    st.floats(0, 60),
)
def test_every_match_is_sized_compatible_and_nobody_twice(
    joins: list[tuple[int, float]], low: int, extra: int, now: float
) -> None:
    mm = Matchmaker(min_players=low, max_players=low + extra)
    ratings = {}
    for i, (rating, at) in enumerate(sorted(joins, key=lambda j: j[1])):
        mm.join(f"u{i}", rating, at)
        ratings[f"u{i}"] = rating
    queued = set(mm.waiting)
    made = mm.poll(now=max(now, max(at for _, at in joins)))
    seen: set[str] = set()
    for group in made:
        assert low <= len(group) <= low + extra
        for p in group:
            assert p.user_id not in seen
            seen.add(p.user_id)
            for q in group:
                assert p.accepts(q, max(now, max(at for _, at in joins)))
    assert seen | set(mm.waiting) == queued and not seen & set(mm.waiting)
