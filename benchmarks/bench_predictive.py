"""Does predictive rotation keep turns from running into the usage limit?

Prints one JSON line per policy. A pure simulation: no Codex, no HTTP, no clock.

A session of ``--turns`` turns runs over three accounts whose five-hour and
weekly windows start part used (:func:`starting_usage`). Each turn's model
requests cost a skewed, seeded amount of the five-hour window (lognormal,
median 5 %, clipped to 2..12 %; the weekly window pays a fixed share of it),
and after some turns a side request the supervised rollout never shows
spends more (the TUI's thread title after the first turn, 2..5 %; now and
then another unseen request, 1..4 %). The loop mimics the supervisor:

- at each turn boundary it asks :meth:`RotationPolicy.decide` about the
  running account, which it sees through the rollout (the quota reported
  with the last model response, so without the side request that came
  after it), and about the others through the usage endpoint (whole
  percents, as the real endpoint sends them);
- it rotates on :class:`RotateAtBoundary`; a turn that starts on an account
  that reaches 100 % during it is *refused* (Codex gets 429
  ``usage_limit_reached`` mid-turn): the supervisor rotates now and the turn
  runs again on the successor;
- after each turn it learns what the turn cost with :func:`spent_between`
  over usage-endpoint snapshots taken around it (these see the side
  requests) and :meth:`TurnCosts.observe`.

Figures per policy over ``--seeds`` sessions: ``refused_turns`` (the goal is
0); ``refused_with_successor``, those of them that started although the
policy had an eligible successor at hand (the rest started because no
account was eligible any more, and the policy keeps using an account until
it runs out); ``sessions_with_refusal``; ``boundary_rotations``;
``stalled_sessions`` (no account could run: a WaitUntil); and
``mean_left_at_rotation``, the true five-hour quota left behind on an
account rotated away from at a boundary (the price of rotating early, which
also drains the pool of eligible successors sooner). ``thresholds`` is
today's policy without turn costs; ``turn_costs`` passes each account's
learned cost in :attr:`Candidate.turn_cost` (one line per ``--margins``
value; ``--margins 1,1.5,2`` shows the trade-off).

:func:`session_costs` (and :func:`request_costs` for
``FakeCodexBackend.set_request_costs``) give the same per-turn costs for a
seed to an end-to-end run against the real supervisor.

    python benchmarks/bench_predictive.py [--seeds N] [--first-seed S] [--turns T]
                                          [--margins 1.5,2]

``--margins`` defaults to the policy's own ``cost_margin``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import attrs

from codex_supervisor.policy import (
    Candidate,
    PauseAtBoundary,
    RotateAtBoundary,
    RotateNow,
    RotationPolicy,
    TurnCosts,
    WaitUntil,
    spent_between,
)
from codex_supervisor.quota import QuotaSnapshot, QuotaWindow, SnapshotSource

ACCOUNTS = ("alpha", "beta", "gamma")
#: Share of a turn's five-hour cost that the weekly window pays.
WEEKLY_SHARE = 0.15
_START = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
_TURN_TIME = timedelta(minutes=2)
_FIVE_RESET = _START + timedelta(hours=4)
_WEEK_RESET = _START + timedelta(days=3)


def _emit(name: str, **figures: object) -> None:
    print(json.dumps({"benchmark": name, **figures}), flush=True)


# -- the costs of a session --------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SimTurn:
    """What one turn spends of the five-hour window, in percentage points.

    ``model`` is spent by the turn's own model requests (the rollout reports
    the quota after them); ``side`` by a side request after the turn that
    only the usage endpoint sees (0 when there is none).
    """

    model: float
    side: float


def session_costs(seed: int, turns: int = 20) -> list[SimTurn]:
    """The per-turn costs of one simulated session, the same for the same seed.

    Model cost: lognormal with a median of 5 % and sigma 0.5 (a few turns cost
    two or three times the median), clipped to 2..12 %. Side requests: the
    thread title after the first turn (2..5 %), then one after a turn with
    probability 0.2 (1..4 %).
    """
    rng = random.Random(seed)
    costs = []
    for index in range(turns):
        model = min(12.0, max(2.0, rng.lognormvariate(math.log(5.0), 0.5)))
        if index == 0:
            side = rng.uniform(2.0, 5.0)
        elif rng.random() < 0.2:
            side = rng.uniform(1.0, 4.0)
        else:
            side = 0.0
        costs.append(SimTurn(model=round(model, 2), side=round(side, 2)))
    return costs


def request_costs(turns: Sequence[SimTurn]) -> list[float]:
    """The same costs as one queue of requests: each turn's model cost, then its side cost.

    For ``FakeCodexBackend.set_request_costs``, which takes one cost per
    served request in arrival order: it assumes one model request per turn
    and one request per nonzero side cost (a turn without one adds nothing).
    The TUI sends its title request alongside the first turn's request, so
    those two may be consumed in either order; the turn's total is the same.
    """
    queue = []
    for turn in turns:
        queue.append(turn.model)
        if turn.side > 0.0:
            queue.append(turn.side)
    return queue


def starting_usage(seed: int) -> dict[str, tuple[float, float]]:
    """Five-hour and weekly used percent of each account at the start of a session."""
    rng = random.Random(f"start-{seed}")
    return {
        "alpha": (rng.uniform(30, 60), rng.uniform(20, 50)),
        "beta": (rng.uniform(10, 40), rng.uniform(20, 50)),
        "gamma": (rng.uniform(20, 50), rng.uniform(20, 50)),
    }


# -- the simulated supervisor ------------------------------------------------------------


@attrs.define
class _Account:
    five: float
    weekly: float
    # What the last model response on this account reported (the rollout view).
    reported: tuple[float, float] | None = None

    def spend(self, points: float) -> None:
        self.five = min(100.0, self.five + points)
        self.weekly = min(100.0, self.weekly + points * WEEKLY_SHARE)


def _snapshot(
    name: str, five: float, weekly: float, now: datetime, source: SnapshotSource
) -> QuotaSnapshot:
    return QuotaSnapshot(
        account=name,
        windows=(
            QuotaWindow(used_percent=five, window_minutes=300, resets_at=_FIVE_RESET),
            QuotaWindow(used_percent=weekly, window_minutes=10080, resets_at=_WEEK_RESET),
        ),
        source=source,
        observed_at=now,
        limit_id="codex",
    )


def _usage(name: str, account: _Account, now: datetime) -> QuotaSnapshot:
    # The usage endpoint sends whole percents.
    return _snapshot(
        name, round(account.five), round(account.weekly), now, SnapshotSource.USAGE_ENDPOINT
    )


def _seen(name: str, account: _Account, now: datetime) -> QuotaSnapshot:
    if account.reported is None:  # not run on yet: the usage probe made at launch
        return _usage(name, account, now)
    five, weekly = account.reported
    return _snapshot(name, five, weekly, now, SnapshotSource.ROLLOUT)


@attrs.frozen(kw_only=True)
class Outcome:
    """What happened in one simulated session."""

    refused_turns: int
    #: Refused turns that started although an eligible successor was at hand.
    refused_with_successor: int
    boundary_rotations: int
    stalled: bool
    left_at_rotation: tuple[float, ...]


def simulate(seed: int, policy: RotationPolicy, *, predictive: bool, turns: int = 20) -> Outcome:
    """Run one session of ``turns`` turns; ``predictive`` passes the learned turn costs."""
    costs = session_costs(seed, turns)
    world = {name: _Account(five, weekly) for name, (five, weekly) in starting_usage(seed).items()}
    learned = TurnCosts()
    now = _START

    def candidate(name: str, *, running: bool) -> Candidate:
        account = world[name]
        snapshot = _seen(name, account, now) if running else _usage(name, account, now)
        # As the AccountSelector does: an account without history of its own
        # is expected to cost what the dearest account learnt costs.
        cost = (learned.expected(name) or learned.prior()) if predictive else {}
        return Candidate(name=name, snapshot=snapshot, turn_cost=cost)

    first = policy.choose([candidate(n, running=False) for n in ACCOUNTS], now)
    if isinstance(first, WaitUntil):
        return Outcome(
            refused_turns=0,
            refused_with_successor=0,
            boundary_rotations=0,
            stalled=True,
            left_at_rotation=(),
        )
    current = first
    refused = avoidable = rotations = 0
    left: list[float] = []
    error: str | None = None
    index = 0
    while index < turns:
        others = [candidate(n, running=False) for n in ACCOUNTS if n != current]
        decision = policy.decide(
            candidate(current, running=True), others, now, last_turn_error=error
        )
        error = None
        # Whether the policy could have moved on before this turn.
        had_successor = bool(policy.rank(others, now))
        if isinstance(decision, WaitUntil | PauseAtBoundary):
            return Outcome(
                refused_turns=refused,
                refused_with_successor=avoidable,
                boundary_rotations=rotations,
                stalled=True,
                left_at_rotation=tuple(left),
            )
        if isinstance(decision, RotateAtBoundary):
            rotations += 1
            left.append(100.0 - world[current].five)
            current = decision.successor
        elif isinstance(decision, RotateNow):
            current = decision.successor
        account = world[current]
        turn = costs[index]
        before = _usage(current, account, now)
        now += _TURN_TIME
        if account.five + turn.model >= 100.0:
            # The limit is hit mid-turn: Codex gets 429 and the turn fails.
            account.spend(turn.model)
            account.reported = (account.five, account.weekly)
            refused += 1
            avoidable += had_successor and not isinstance(decision, RotateAtBoundary | RotateNow)
            error = "usage_limit_reached"
            continue  # the same turn again, on the account decide() names
        account.spend(turn.model)
        account.reported = (account.five, account.weekly)
        account.spend(turn.side)  # unseen by the rollout
        learned = learned.observe(current, spent_between(before, _usage(current, account, now)))
        index += 1
    return Outcome(
        refused_turns=refused,
        refused_with_successor=avoidable,
        boundary_rotations=rotations,
        stalled=False,
        left_at_rotation=tuple(left),
    )


def bench(mode: str, policy: RotationPolicy, seeds: range, turns: int, *, predictive: bool) -> None:
    """Simulate every seed with one policy and print its figures."""
    outcomes = [simulate(seed, policy, predictive=predictive, turns=turns) for seed in seeds]
    left = [x for o in outcomes for x in o.left_at_rotation]
    figures: dict[str, object] = {
        "mode": mode,
        "seeds": len(outcomes),
        "turns_per_session": turns,
        "refused_turns": sum(o.refused_turns for o in outcomes),
        "refused_with_successor": sum(o.refused_with_successor for o in outcomes),
        "sessions_with_refusal": sum(1 for o in outcomes if o.refused_turns),
        "boundary_rotations": sum(o.boundary_rotations for o in outcomes),
        "stalled_sessions": sum(1 for o in outcomes if o.stalled),
        "mean_left_at_rotation": round(statistics.fmean(left), 2) if left else None,
    }
    if predictive:
        figures["cost_margin"] = policy.cost_margin
    _emit("predictive_rotation", **figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200, help="sessions per policy")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--turns", type=int, default=20, help="turns per session")
    parser.add_argument(
        "--margins",
        default=str(RotationPolicy().cost_margin),
        help="comma-separated cost_margin values to simulate (default: the policy's)",
    )
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    bench("thresholds", RotationPolicy(), seeds, args.turns, predictive=False)
    for margin in (float(m) for m in args.margins.split(",")):
        policy = RotationPolicy(cost_margin=margin)
        bench("turn_costs", policy, seeds, args.turns, predictive=True)


if __name__ == "__main__":
    main()
