"""Drift alerts, measured over a grid of generated sites: how soon a drop in buying is
flagged, which drops are missed, and how many alerts sites where nothing happened raise
(each one a false alarm), per source-year.

Each site is generated (:class:`ampelios.core.generate.Scenario`: growth, weekly rhythm,
one-day spikes, drops) at a volume given in purchases a day, turned into its period tables
by Ampelios's own core (:func:`ampelios.core.periods.periods_of`: the tables depend only
on the events, not on how they arrive), the model settled on the last day's population as
the model's owner settles it, and :func:`ampelios.core.drift.source_alerts` judges every
signal, as the owner does at each settling. The grid:

- **quiet sites** (no drop; every alert is a false alarm): steady, growing tenfold over
  the window, weekends half the weekdays, one day with five times the visitors, and a
  *shop* with all three;
- **drops** of buying (cart-to-purchase conversion and the purchase rate fall by the
  factor, add-to-carts stay) of each factor and length, from 2015-08-01, on a steady site
  and on the shop: the event-days from the drop's start until the purchase rate or the
  conversion is flagged down (the end of the day whose data showed it), or a miss when
  neither is flagged before the drop ends.

    python scripts/bench_drift.py                            # the grid, 5 seeds
    python scripts/bench_drift.py --purchases 3 --seeds 1    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median

from ampelios.config import Settings
from ampelios.core.drift import Alert, source_alerts
from ampelios.core.generate import (
    DAY_MS,
    SHARE_TRANSACTION,
    WINDOW_DAYS,
    WINDOW_START_MS,
    Drop,
    Scenario,
    generate_events,
)
from ampelios.core.model import SegmentModel, update
from ampelios.core.periods import PeriodTables, periods_of

RETAILROCKET_PURCHASES = 22_457 / WINDOW_DAYS  # about 160 a day
VOLUMES = (RETAILROCKET_PURCHASES, 3.0, RETAILROCKET_PURCHASES / 100)  # purchases a day
DROP_DAY = 90  # 2015-08-01
QUIET = {
    "steady": Scenario(),
    "growth x10": Scenario(growth=10.0),
    "weekends 1/2": Scenario(weekend=0.5),
    "one day x5": Scenario(spikes=((60, 5.0),)),
    "shop": Scenario(growth=10.0, weekend=0.5, spikes=((60, 5.0),)),
}
DROPS = ((0.5, 10), (0.5, 21), (0.1, 10), (0.1, 21))  # (factor, days)
DROP_SIGNALS = ("purchase_rate", "conversion")


@dataclass(frozen=True)
class Site:
    """One generated site of the grid."""

    purchases: float  # a day, on average over the window
    background: str  # a key of QUIET
    seed: int
    drop: tuple[float, int] | None = None  # (factor, days) from DROP_DAY

    @property
    def events(self) -> int:
        return round(self.purchases * WINDOW_DAYS / SHARE_TRANSACTION)

    def scenario(self) -> Scenario:
        quiet = QUIET[self.background]
        if self.drop is None:
            return quiet
        factor, days = self.drop
        start = WINDOW_START_MS + DROP_DAY * DAY_MS
        return Scenario(quiet.growth, quiet.weekend, quiet.spikes, (Drop(start, start + days * DAY_MS, factor),))


def judged(site: Site, k: int) -> tuple[list[Alert], SegmentModel, PeriodTables]:
    """The alerts of one site, the model they were judged under, and its tables."""
    events = generate_events(site.events, seed=site.seed, scenario=site.scenario())
    periods = periods_of(events, Settings().session_gap_ms, None, DAY_MS)
    model = update(None, periods.population(max(periods.activity)), k, settle=True)
    tables = PeriodTables.of(periods, model, DAY_MS)
    return source_alerts(tables.activity, tables.visitors, tables.closed), model, tables


def name(alert: Alert, model: SegmentModel) -> str:
    return alert.signal if alert.segment is None else f"share of {model.labels[alert.segment]}"


def measure(site: Site, k: int) -> dict:
    """A site's alerts (signal, direction, the day its shift started and the day it was
    flagged, in days of the window) and, for a drop, when it was flagged."""
    alerts, model, tables = judged(site, k)
    offset = (tables.starts[0] - WINDOW_START_MS) // DAY_MS  # the tables begin at the first event's day
    found = [
        {
            "signal": name(a, model),
            "direction": a.shift.direction,
            "started": a.shift.started + offset,
            "flagged": a.shift.detected + offset + 1,  # the end of the day that showed it
            "before": a.shift.before,
            "after": a.shift.after,
        }
        for a in alerts
    ]
    report = {**asdict(site), "events": site.events, "alerts": found}
    if site.drop is not None:
        flagged = [
            a["flagged"] - DROP_DAY
            for a in found
            if a["signal"] in DROP_SIGNALS and a["direction"] == "down" and a["started"] >= DROP_DAY - 7
        ]
        delay = min(flagged, default=None)
        report["delay"] = delay if delay is not None and delay <= site.drop[1] else None
    return report


def grid(volumes: list[float], seeds: int) -> list[Site]:
    sites = []
    for purchases in volumes:
        for seed in range(1, seeds + 1):
            sites += [Site(purchases, background, seed) for background in QUIET]
            sites += [Site(purchases, background, seed, drop) for background in ("steady", "shop") for drop in DROPS]
    return sites


def print_tables(reports: list[dict]) -> None:
    """Drops: the median and slowest delay over the seeds, and the misses. Quiet sites: the
    alerts (each a false alarm), per source-year, and their signals."""
    print(f"{'purchases/day':>13}  {'site':12}  {'drop':>10}  {'flagged (median, slowest)':>26}  {'missed':>8}")
    for r in reports:
        r["key"] = (r["purchases"], r["background"], tuple(r["drop"]) if r["drop"] else None)
    keys = list(dict.fromkeys(r["key"] for r in reports))
    for purchases, background, drop in (k for k in keys if k[2] is not None):
        mine = [r for r in reports if r["key"] == (purchases, background, drop)]
        delays = [r["delay"] for r in mine if r["delay"] is not None]
        flagged = f"{median(delays):.0f} d, {max(delays)} d" if delays else "-"
        what = f"x{drop[0]:g} {drop[1]} d"
        missed = f"{len(mine) - len(delays)} of {len(mine)}"
        print(f"{purchases:>13.1f}  {background:12}  {what:>10}  {flagged:>26}  {missed:>8}")
    print()
    print(f"{'purchases/day':>13}  {'site':12}  {'false alarms':>12}  {'per source-year':>15}  signals")
    for purchases, background, _ in (k for k in keys if k[2] is None):
        mine = [r for r in reports if r["key"] == (purchases, background, None)]
        alerts = [a for r in mine for a in r["alerts"]]
        per_year = len(alerts) / (len(mine) * WINDOW_DAYS / 365)
        signals = ", ".join(sorted({f"{a['signal']} {a['direction']}" for a in alerts})) or "-"
        print(f"{purchases:>13.1f}  {background:12}  {len(alerts):>12}  {per_year:>15.2f}  {signals}")
    for r in reports:
        del r["key"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purchases", type=float, nargs="+", default=list(VOLUMES), help="a day, on average")
    parser.add_argument("--seeds", type=int, default=5, help="sites of each kind per volume")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write every site's alerts here")
    args = parser.parse_args()
    began = time.perf_counter()
    reports = [measure(site, args.k) for site in grid(args.purchases, args.seeds)]
    print_tables(reports)
    print(f"\n{len(reports)} sites in {time.perf_counter() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1) + "\n")


if __name__ == "__main__":
    main()
