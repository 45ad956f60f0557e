"""The SDK's push ledger on its own: no socket, no event loop, times passed in. What it
decides is what AsyncClient does (tests/test_client_push.py shows it against a server)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client_sdk.ledger import PushGap, PushLedger, Verdict

DELIVER, DUPLICATE = Verdict.DELIVER, Verdict.DUPLICATE


def logged_in(ack_delay: float = 0.05, ack_every: int = 64) -> PushLedger:
    ledger = PushLedger(ack_delay, ack_every)
    ledger.logged_in()
    return ledger


def test_bad_batching_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        PushLedger(-1, 64)
    with pytest.raises(ValueError):
        PushLedger(0.05, 0)


def test_a_tracked_session_delivers_each_seq_once_and_drops_replays() -> None:
    ledger = logged_in()
    assert [ledger.push(seq, 0.0) for seq in (1, 2, 3)] == [DELIVER] * 3
    assert ledger.push(2, 0.0) is DUPLICATE and ledger.push(3, 0.0) is DUPLICATE
    assert ledger.push(4, 0.0) is DELIVER
    assert ledger.last_seq == 4 and ledger.duplicates == 2


def test_latest_value_pushes_always_pass_and_are_never_acknowledged() -> None:
    ledger = logged_in()
    assert [ledger.push(0, 0.0) for _ in range(3)] == [DELIVER] * 3
    assert ledger.last_seq == 0 and ledger.ack_due is None and ledger.take_ack() is None


def test_an_untracked_session_passes_everything_and_acknowledges_nothing() -> None:
    # A LoginRequest sent by hand: the ledger never heard of its session.
    ledger = PushLedger()
    assert [ledger.push(seq, 0.0) for seq in (1, 2, 2, 1)] == [DELIVER] * 4
    assert ledger.duplicates == 0 and ledger.last_seq == 2  # what a Resume would name
    assert ledger.ack_due is None and ledger.take_ack() is None


def test_an_ack_is_due_ack_delay_after_the_first_push_it_covers() -> None:
    ledger = logged_in(ack_delay=0.5)
    ledger.push(1, 10.0)
    assert ledger.ack_due == 10.5
    ledger.push(2, 10.3)  # later pushes do not push the deadline back
    assert ledger.ack_due == 10.5
    assert ledger.take_ack() == 2
    assert ledger.ack_due is None and ledger.take_ack() is None  # nothing new
    ledger.push(3, 11.0)
    assert ledger.ack_due == 11.5 and ledger.take_ack() == 3


def test_an_ack_is_due_at_once_when_ack_every_pushes_wait() -> None:
    ledger = logged_in(ack_delay=60, ack_every=3)
    ledger.push(1, 1.0)
    ledger.push(2, 1.1)
    assert ledger.ack_due == 61.0
    ledger.push(3, 1.2)
    assert ledger.ack_due == 1.2  # due now: after the frames in hand
    ledger.push(4, 1.3)
    assert ledger.ack_due == 1.2
    assert ledger.take_ack() == 4 and ledger.acked_seq == 4


def test_no_ack_while_detached_and_a_refused_request_restores_acks() -> None:
    ledger = logged_in(ack_delay=1)
    ledger.push(1, 0.0)
    assert ledger.detach() is True
    assert ledger.ack_due is None and ledger.take_ack() is None
    ledger.push(2, 0.0)  # still delivered, not acknowledged yet
    assert ledger.ack_due is None
    ledger.refused(True)  # the Login was refused: the session stays on the connection
    assert ledger.take_ack() == 2


def test_a_new_login_counts_from_one_and_clears_the_gap() -> None:
    ledger = logged_in()
    for seq in (1, 2, 3):
        ledger.push(seq, 0.0)
    ledger.resumed(asked=3, ours=True, push_gap=True, server_last=9, now=0.0)
    ledger.logged_in()
    assert ledger.last_seq == 0 and not ledger.gap
    assert ledger.push(1, 0.0) is DELIVER


def test_resuming_its_own_session_keeps_the_count_and_drops_the_replay() -> None:
    ledger = logged_in()
    for seq in range(1, 11):
        ledger.push(seq, 0.0)
    # Asked for a replay after 4 (as a Resume by hand may): 5..10 were delivered already.
    assert ledger.resumed(asked=4, ours=True, push_gap=False, server_last=10, now=5.0) is None
    assert ledger.ack_due is not None  # acks on the old connection may be lost
    assert [ledger.push(seq, 5.0) for seq in range(5, 12)] == [DUPLICATE] * 6 + [DELIVER]
    assert ledger.duplicates == 6 and ledger.take_ack() == 11


def test_resuming_another_session_counts_from_what_was_asked() -> None:
    ledger = logged_in()
    ledger.push(7, 0.0)
    ledger.resumed(asked=2, ours=False, push_gap=False, server_last=5, now=0.0)
    assert ledger.last_seq == 2
    assert [ledger.push(seq, 0.0) for seq in (2, 3)] == [DUPLICATE, DELIVER]


def test_a_gap_after_a_resume_is_reported_and_the_next_resume_clears_it() -> None:
    ledger = logged_in()
    ledger.push(1, 0.0)
    ledger.push(2, 0.0)
    gap = ledger.resumed(asked=2, ours=True, push_gap=True, server_last=12, now=0.0)
    assert gap == PushGap(seen=2, last_push_seq=12) and ledger.gap
    assert ledger.push(9, 0.0) is DELIVER  # the sequence jumps past the gap
    assert ledger.resumed(asked=9, ours=True, push_gap=False, server_last=9, now=0.0) is None
    assert not ledger.gap


def test_forgetting_the_session_stops_tracking() -> None:
    ledger = logged_in()
    ledger.push(1, 0.0)
    ledger.forget()
    assert ledger.last_seq == 0 and not ledger.tracking and ledger.take_ack() is None
    assert ledger.push(1, 0.0) is DELIVER


def test_the_highest_seq_is_not_followed_by_a_wraparound() -> None:
    # docs/protocol.md: a session's seq is never reused, so 1 after 2**32-1 is a replay.
    ledger = logged_in()
    top = 2**32 - 1
    assert ledger.push(top, 0.0) is DELIVER
    assert ledger.push(1, 0.0) is DUPLICATE and ledger.take_ack() == top


@given(st.lists(st.integers(min_value=0, max_value=30), max_size=200))
def test_any_arrival_order_delivers_each_seq_at_most_once_and_in_order(
    arrivals: list[int],
) -> None:
    ledger = logged_in(ack_delay=0.1, ack_every=5)
    delivered: list[int] = []
    acked: list[int] = []
    for n, seq in enumerate(arrivals):
        if ledger.push(seq, float(n)) is DELIVER and seq:
            delivered.append(seq)
        if ledger.ack_due is not None and ledger.ack_due <= n:
            ack = ledger.take_ack()
            if ack is not None:
                acked.append(ack)
    assert delivered == sorted(set(delivered))
    assert ledger.duplicates == sum(1 for s in arrivals if s) - len(delivered)
    # Every ack covers only delivered pushes, and each covers more than the last.
    assert acked == sorted(set(acked)) and set(acked) <= set(delivered)
