"""Drift alerts, measured: how soon a purchase drop and its recovery are flagged, and how
many alerts steady data raises (each one a false alarm).

For each volume (Retailrocket's 2,756,101 events over 139 days, and 1/100 of it) and each
setting of ``AMPELIOS_ACTIVE_DAYS`` (unset, 14), generated events (those of
``ampelios generate``) are turned into their period tables by Ampelios's own core
(:func:`ampelios.core.periods.periods_of`: the tables depend only on the events, not on
how they arrive), the model is settled on the population of the last day as the model's
owner settles it, and :func:`ampelios.core.drift.source_alerts` judges every signal, as
the owner does at each settling:

- one file whose visitors buy a tenth as often from START to END (``--purchase-drop``):
  per signal, the event-days from START until the drop is flagged (the end of the day
  whose data showed it) and from END until its recovery is;
- SEEDS files of steady data: every alert there is a false alarm.

    python scripts/bench_drift.py                             # both volumes, 5 seeds
    python scripts/bench_drift.py --events 30000 --seeds 1    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from ampelios.config import Settings
from ampelios.core.drift import Alert, source_alerts
from ampelios.core.generate import generate_events
from ampelios.core.model import SegmentModel, update
from ampelios.core.periods import PeriodTables, periods_of

DAY_MS = 86_400_000
RETAILROCKET_EVENTS = 2_756_101


def day(text: str) -> int:
    return round(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def judged(n_events: int, seed: int, drop: tuple[int, int] | None, window_days: float | None, k: int):
    """The alerts of one generated file, the model they were judged under, and its tables."""
    settings = Settings()
    window_ms = round(window_days * DAY_MS) if window_days else None
    events = generate_events(n_events, seed=seed, purchase_drop=drop)
    periods = periods_of(events, settings.session_gap_ms, window_ms, DAY_MS)
    model = update(None, periods.population(max(periods.activity)), k, settle=True)
    tables = PeriodTables.of(periods, model, DAY_MS)
    return source_alerts(tables.activity, tables.visitors, tables.closed), model, tables


def name(alert: Alert, model: SegmentModel) -> str:
    return alert.signal if alert.segment is None else f"share of {model.labels[alert.segment]}"


def measure(n_events: int, seeds: int, start: int, end: int, window_days: float | None, k: int) -> dict:
    """The drop file's flagged signals with their delays, and the steady files' alerts."""
    alerts, model, tables = judged(n_events, 0, (start, end), window_days, k)
    first = tables.starts[0]
    flagged = []
    for alert in alerts:
        detected = first + (alert.shift.detected + 1) * DAY_MS  # the end of the day that showed it
        row = {
            "signal": name(alert, model),
            "direction": alert.shift.direction,
            "started": datetime.fromtimestamp((first + alert.shift.started * DAY_MS) / 1000, tz=UTC).date().isoformat(),
            "flagged_days_after_start": (detected - start) / DAY_MS,
            "flagged_days_after_end": (detected - end) / DAY_MS,
            "before": alert.shift.before,
            "after": alert.shift.after,
            "recovery_flagged_days_after_end": None,
        }
        if alert.recovered is not None:
            row["recovery_flagged_days_after_end"] = (first + (alert.recovered.detected + 1) * DAY_MS - end) / DAY_MS
        flagged.append(row)
    false_alarms = []
    for seed in range(1, seeds + 1):
        steady, steady_model, _ = judged(n_events, seed, None, window_days, k)
        false_alarms += [
            {"seed": seed, "signal": name(a, steady_model), "direction": a.shift.direction, "day": a.shift.started}
            for a in steady
        ]
    return {
        "events": n_events,
        "events_per_day": round(n_events / len(tables.starts)),
        "active_days": window_days,
        "steady_files": seeds,
        "drop": flagged,
        "false_alarms": false_alarms,
    }


def print_table(reports: list[dict]) -> None:
    """Per volume, setting and signal: event-days from START until the drop was flagged,
    from END until its recovery was (or, where the drop was not flagged, until the return
    was flagged as a rise), and the steady files' alerts."""
    header = (
        f"{'events/day':>10}  {'active days':>11}  {'signal':42}  {'drop flagged':>12}  {'recovery':>12}  "
        f"{'false alarms':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in reports:
        signals = sorted({a["signal"] for a in r["drop"]} | {a["signal"] for a in r["false_alarms"]})
        for signal in signals:
            mine = [a for a in r["drop"] if a["signal"] == signal]
            down = next((a for a in mine if a["direction"] == "down"), None)
            up = next((a for a in mine if a["direction"] == "up"), None)
            drop, recovery = "not flagged", "-"
            if down is not None:
                drop = f"{down['flagged_days_after_start']:.0f} d"
                if down["recovery_flagged_days_after_end"] is not None:
                    recovery = f"{down['recovery_flagged_days_after_end']:.0f} d"
            elif up is not None:
                recovery = f"rise {up['flagged_days_after_end']:.0f} d"
            false = sum(1 for a in r["false_alarms"] if a["signal"] == signal)
            print(
                f"{r['events_per_day']:>10,}  {r['active_days'] or '-'!s:>11}  {signal:42}  {drop:>12}  "
                f"{recovery:>12}  {false:>4} in {r['steady_files']}"
            )
        files = len({a["seed"] for a in r["false_alarms"]})
        print(
            f"{'':>10}  {'':>11}  {'steady files with any alert':42}  {'':>12}  {'':>12}  "
            f"{files:>4} of {r['steady_files']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[RETAILROCKET_EVENTS, RETAILROCKET_EVENTS // 100])
    parser.add_argument("--seeds", type=int, default=5, help="steady files per volume")
    parser.add_argument("--purchase-drop", default="2015-07-01:2015-07-22", metavar="START:END")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    start, end = (day(d) for d in args.purchase_drop.split(":"))
    reports = []
    for n in args.events:
        for window in (None, 14.0):
            began = time.perf_counter()
            reports.append(measure(n, args.seeds, start, end, window, args.k))
            reports[-1]["seconds"] = round(time.perf_counter() - began, 1)
    print_table(reports)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2) + "\n")


if __name__ == "__main__":
    main()
