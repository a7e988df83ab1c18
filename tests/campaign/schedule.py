"""Which faults strike when: drawn from a seed, so that a seed that finds a divergence
replays the same schedule.

>>> draw_schedule(7, faults=3, span=60.0, workers=3) == draw_schedule(7, faults=3, span=60.0, workers=3)
True
"""

from __future__ import annotations

import random
from dataclasses import dataclass

WORKER_FAULTS = ("kill", "pause", "wipe")  # strike one worker
SERVICE_FAULTS = ("broker", "postgres", "receiver", "stack")  # stop a service (or all), start it again
FAULT_KINDS = WORKER_FAULTS + SERVICE_FAULTS
LASTING = {  # seconds, low-high
    "pause": (2.0, 20.0),
    "broker": (1.0, 10.0),
    "postgres": (1.0, 10.0),
    "receiver": (10.0, 120.0),
    "stack": (1.0, 10.0),
}


@dataclass(frozen=True)
class Fault:
    """One fault: ``at`` seconds after the feeds start, of ``kind``, on worker ``worker``
    (``-1`` for a service), lasting ``seconds`` (0: at once).

    - ``kill``: SIGKILL, then start the worker again on its state directory;
    - ``pause``: SIGSTOP, ``seconds`` later SIGCONT (past the session timeout the worker
      has lost its group and comes back into it);
    - ``wipe``: SIGKILL, its state directory deleted, started again (a new machine);
    - ``broker``, ``postgres``: the service stopped, started again ``seconds`` later;
    - ``receiver``: the failing webhook receiver answers 503 for ``seconds`` (the other
      faults go on meanwhile);
    - ``stack``: every worker and the broker SIGKILLed, Postgres in immediate shutdown
      (a machine that lost power), all started again ``seconds`` later.
    """

    at: float
    kind: str
    worker: int
    seconds: float

    def __str__(self) -> str:
        whom = f" worker {self.worker}" if self.worker >= 0 else ""
        lasting = f" for {self.seconds:.1f}s" if self.seconds else ""
        return f"{self.at:6.1f}s {self.kind}{whom}{lasting}"


def draw_schedule(
    seed: int, faults: int, span: float, workers: int, kinds: tuple[str, ...] = FAULT_KINDS
) -> list[Fault]:
    """``faults`` faults at uniform moments of ``[0, span)`` seconds, in time order, each
    of a kind drawn uniformly from ``kinds``, on a uniform worker when it strikes one."""
    rng = random.Random(seed)
    drawn = []
    for at in sorted(rng.uniform(0.0, span) for _ in range(faults)):
        kind = rng.choice(kinds)
        worker = rng.randrange(workers) if kind in WORKER_FAULTS else -1
        low, high = LASTING.get(kind, (0.0, 0.0))
        drawn.append(Fault(round(at, 1), kind, worker, round(rng.uniform(low, high), 1)))
    return drawn
