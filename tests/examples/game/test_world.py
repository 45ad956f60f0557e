"""The match simulation (examples/game/world.py): deterministic, inputs idempotent."""

from __future__ import annotations

from examples.game.world import PICKUP, SIZE, SPEED, World


def test_a_player_moves_by_its_input_and_stays_in_the_arena() -> None:
    world = World(seed=1)
    player = world.add(0, "alice")
    start = (player.x, player.y)
    assert world.steer(0, 1, 0, seq=1)
    world.step()
    assert (player.x, player.y) == (start[0] + SPEED, start[1])
    assert world.steer(0, -5, -1, seq=2)  # clamped to a unit direction
    for _ in range(SIZE):
        world.step()
        if player.x == 0 and player.y == 0:
            break
    assert (player.x, player.y) == (0, 0)


def test_an_old_or_repeated_input_is_ignored() -> None:
    world = World(seed=1)
    world.add(0, "alice")
    assert world.steer(0, 1, 1, seq=5)
    assert not world.steer(0, -1, -1, seq=5) and not world.steer(0, -1, -1, seq=4)
    assert (world.players[0].dx, world.players[0].dy) == (1, 1)
    assert not world.steer(3, 1, 1, seq=9)  # no such seat


def test_a_coin_goes_to_the_nearest_player_and_is_replaced() -> None:
    world = World(seed=7)
    a, b = world.add(0, "a"), world.add(1, "b")
    cx, cy = world.coins[0]
    a.x, a.y = cx + PICKUP // 2, cy
    b.x, b.y = cx, cy + PICKUP // 4
    [taken] = [t for t in world.step() if t.coin == 0]
    assert taken.seat == 1 and b.score == 1 and a.score == 0
    assert world.coins[0] != (cx, cy)


def test_the_same_seed_and_inputs_give_the_same_match() -> None:
    def play() -> list[tuple[int, int, int]]:
        world = World(seed=42, steps_total=400)
        for seat in range(3):
            world.add(seat, f"p{seat}")
        for step in range(400):
            for seat in range(3):
                world.steer(seat, (step // 40 + seat) % 3 - 1, (step // 25) % 3 - 1, step + 1)
            world.step()
        return [(p.x, p.y, p.score) for p in world.players.values()]

    assert play() == play()


def test_the_match_ends_at_its_step_count_or_target() -> None:
    world = World(seed=3, steps_total=5)
    world.add(0, "a")
    for _ in range(5):
        assert not world.over
        world.step()
    assert world.over
    short = World(seed=3, target=1)
    short.add(0, "a").score = 1
    assert short.over and short.winner() is not None
