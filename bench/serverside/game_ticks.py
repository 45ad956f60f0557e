"""N players moving in M matches of the example game: ticks/s, late ticks, tick jitter
at 20 Hz, snapshot deliveries/s, and the time from an input to the state that shows it.

    .venv/bin/python -m bench.serverside.game_ticks --matches 500 --duration 10

1. The parent writes a users file (two players a match; scrypt n=16: logins are set-up)
   and starts `tickwire serve --app examples.game:app` on it with 2-player matches that
   last the run (GAME_MAX_PLAYERS=2, GAME_MATCH_SECONDS), metrics on a free port.
2. `--procs` player processes (uvloop, SDK clients) log every player in and queue it;
   the game's matchmaker pairs them into matches, each ticking at 20 Hz and pushing its
   whole state to both players every tick (a latest-value push).
3. Each player sends an Input every 50 ms (a notification, with a rising seq) and notes
   when the first MatchState showing that input arrives. Over the window the processes
   count MatchStates received and the input-to-state times.
4. The parent reads the server's /metrics before and after the window: ticks run, late
   (a quarter period or more) and skipped, the tick lateness p99 since start, and the
   server's CPU over the window.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import sys
import tempfile
import time
import urllib.request
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import uvloop
from hdrh.histogram import HdrHistogram

from bench.login import LoginUser
from bench.proc import CpuSampler, ServerProcess
from bench.serverside.users import make_users
from client_sdk import AsyncClient, Push
from examples.game import game_pb2 as pb
from protocol.registry import system_registry


class Player:
    def __init__(self, client: AsyncClient, user: str) -> None:
        self.client = client
        self.user = user
        self.match_id = ""
        self.seq = 0
        self.sent: dict[int, int] = {}
        self.states = 0
        self.latency = HdrHistogram(1, 60_000_000, 2)
        client.on_push(pb.MatchFound, self._found)
        client.on_push(pb.MatchState, self._state)

    def _found(self, push: Push) -> None:
        assert isinstance(push.message, pb.MatchFound)
        self.match_id = push.message.match_id

    def _state(self, push: Push) -> None:
        state = push.message
        assert isinstance(state, pb.MatchState)
        self.states += 1
        for player in state.players:
            if player.user == self.user:
                now = time.perf_counter_ns()
                for seq in [s for s in self.sent if s <= player.input_seq]:
                    self.latency.record_value(max(1, (now - self.sent.pop(seq)) // 1000))

    def steer(self) -> None:
        if not self.match_id or not self.client.connected:
            return
        self.seq += 1
        self.sent[self.seq] = time.perf_counter_ns()
        direction = (self.seq // 20) % 3 - 1
        self.client.notify(
            pb.Input(match_id=self.match_id, seq=self.seq, dx=direction, dy=-direction)
        )


async def _players(pipe: Connection, host: str, port: int, users: list[LoginUser]) -> None:
    players = []
    for user in users:
        client = await AsyncClient.connect(host, port, registry=system_registry([pb]))
        await client.login(user.name, user.password)
        players.append(Player(client, user.name))
    for player in players:
        await player.client.request(pb.QueueRequest())
    while not all(p.match_id for p in players):
        await asyncio.sleep(0.05)
    pipe.send(("ready", len(players)))

    async def steer() -> None:
        while True:
            for player in players:
                player.steer()
            await asyncio.sleep(0.05)

    steering = asyncio.get_running_loop().create_task(steer())
    loop = asyncio.get_running_loop()
    message = await loop.run_in_executor(None, pipe.recv)
    assert message == "start"
    states0 = sum(p.states for p in players)
    for p in players:
        p.latency.reset()
    message = await loop.run_in_executor(None, pipe.recv)
    assert message == "stop"
    states = sum(p.states for p in players) - states0
    latency = HdrHistogram(1, 60_000_000, 2)
    for p in players:
        latency.add(p.latency)
    steering.cancel()
    pipe.send(("done", states, latency.encode()))
    for player in players:
        await player.client.close()


def players_process(pipe: Connection, host: str, port: int, users: list[Any]) -> None:
    uvloop.run(_players(pipe, host, port, [LoginUser(*u) for u in users]))


def _metrics(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    values = {}
    for line in body.decode().splitlines():
        if line.startswith("tickwire_") and " " in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def main(matches: int, duration: float, procs: int) -> None:
    players = 2 * matches
    with tempfile.TemporaryDirectory() as where:
        users = make_users(players, 16, Path(where) / "users.txt")
        os.environ["GAME_MAX_PLAYERS"] = "2"
        os.environ["GAME_MATCH_SECONDS"] = str(duration * 10 + 120)
        cmd = [
            *(sys.executable, "-m", "tools.cli", "serve", "--host", "127.0.0.1", "--port", "0"),
            *("--app", "examples.game:app", "--set", f"users_file={where}/users.txt"),
            *("--set", "metrics=true", "--set", "metrics_port=0"),
            *("--set", "login_queue=10000"),
        ]
        with ServerProcess(cmd) as server:
            found = re.search(r"metrics on http://[\d.]+:(\d+)/metrics", server.tail())
            if found is None:
                raise SystemExit(f"the server said no metrics address:\n{server.tail()}")
            metrics_port = int(found.group(1))
            context = multiprocessing.get_context("spawn")
            pipes, workers = [], []
            for part in range(procs):
                share = [(u.name, u.password) for u in users[part::procs]]
                parent, child = context.Pipe()
                worker = context.Process(
                    target=players_process, args=(child, server.host, server.port, share)
                )
                worker.start()
                pipes.append(parent)
                workers.append(worker)
            ready = sum(pipe.recv()[1] for pipe in pipes)
            time.sleep(1.0)  # warm up: every match ticking
            before = _metrics(metrics_port)
            cpu = CpuSampler([server.pid], tree=False)
            cpu.start()
            for pipe in pipes:
                pipe.send("start")
            started = time.perf_counter()
            time.sleep(duration)
            for pipe in pipes:
                pipe.send("stop")
            elapsed = time.perf_counter() - started
            server_cpu = cpu.stop()
            after = _metrics(metrics_port)
            states = 0
            latency = HdrHistogram(1, 60_000_000, 2)
            for pipe in pipes:
                _, count, encoded = pipe.recv()
                states += count
                latency.add(HdrHistogram.decode(encoded))
            for worker in workers:
                worker.join(10)

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    ticks = delta("tickwire_room_ticks_total")
    print(f"{matches} matches, {ready} players, 20 Hz, {elapsed:.1f} s window")
    print(f"ticks/s            {ticks / elapsed:,.0f} (ideal {matches * 20:,})")
    late = delta("tickwire_room_ticks_late_total")
    print(f"late ticks         {late:,.0f} ({100 * late / max(1, ticks):.2f}%)")
    print(f"skipped ticks      {delta('tickwire_room_ticks_skipped_total'):,.0f}")
    p99 = after.get("tickwire_room_tick_lateness_p99_seconds", 0.0) * 1000
    print(f"tick lateness p99  {p99:.2f} ms (since start)")
    print(f"snapshots/s        {states / elapsed:,.0f} received by players")
    print(
        f"input to state     p50 {latency.get_value_at_percentile(50) / 1000:.1f} ms, "
        f"p99 {latency.get_value_at_percentile(99) / 1000:.1f} ms"
    )
    print(f"server CPU         {server_cpu or 0:.0f}% of a core")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--matches", type=int, default=500)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--procs", type=int, default=2)
    args = parser.parse_args()
    main(args.matches, args.duration, args.procs)
