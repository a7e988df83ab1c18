"""The fault campaign: for each seed, a stack of three workers on Apache Kafka with
Postgres, fed by a live producer, the collector and a CSV replay, delivering to two webhook
receivers, struck by the seed's faults (SIGKILL, SIGSTOP/SIGCONT, a wiped state directory,
a broker or Postgres restart, a receiver down, the whole stack killed), and judged against
a clean run of the same input: every worker's days, alerts, stats, segments, Postgres
visitors and sampled journeys, the Postgres periods and alerts; and each receiver's
deliveries against the run's segment changes. A divergence prints what differs and the
seed that replays it. Run:

    .venv/bin/python scripts/fault_campaign.py --seeds 1-50 [--size full] [--json out.json]
    .venv/bin/python scripts/fault_campaign.py --seeds 7 --size tiny    # one seed again

Exits 1 if any run diverged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the campaign lives in tests/

from tests.campaign.run import SIZES, WORKERS, differences, run
from tests.campaign.schedule import FAULT_KINDS, draw_schedule


def seeds(text: str) -> list[int]:
    """``1-50`` or ``3,7,9``."""
    found: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        found += list(range(int(low), int(high or low) + 1))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=seeds, default=seeds("1-2"))
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--json", type=Path, help="write every run's schedule and verdict here, run by run")
    parser.add_argument("--keep", type=Path, help="run under this directory and keep it (logs, state)")
    parser.add_argument("--logs", type=Path, default=Path("campaign-logs"), help="the logs of divergent runs go here")
    args = parser.parse_args()
    size = SIZES[args.size]
    started = time.monotonic()
    with contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory() as root:
        clean = run(Path(root) / "clean", size, [])
        print(f"clean run: {clean['seconds']} s", flush=True)
        for path, judged in clean["receivers"].items():  # the clean run's receivers are judged too
            for problem in judged["problems"]:
                print(f"  CLEAN RUN WRONG: receiver {path}: {problem}")
        runs = []
        for seed in args.seeds:
            schedule = draw_schedule(seed, size.faults, size.span, WORKERS)
            try:
                struck = run(Path(root) / f"seed-{seed}", size, schedule)
                diverged = differences(clean, struck)
            except Exception as exc:  # a run that cannot be judged (a worker gone, say) diverged
                struck, diverged = {"seconds": None, "receivers": {}}, [f"the run failed: {exc!r:.500}"]
            if diverged:  # its logs kept for whoever replays the seed
                for log in (Path(root) / f"seed-{seed}").glob("*.log"):
                    (args.logs / f"seed-{seed}").mkdir(parents=True, exist_ok=True)
                    shutil.copy(log, args.logs / f"seed-{seed}" / log.name)
            runs.append({"seed": seed, "faults": [vars(f) for f in schedule], "seconds": struck["seconds"]})
            runs[-1] |= {"receivers": struck["receivers"], "divergences": diverged}
            print(f"seed {seed}: {len(diverged)} divergences, {struck['seconds']} s", flush=True)
            for fault in schedule:
                print(f"  {fault}")
            for path, judged in struck["receivers"].items():
                figures = ", ".join(f"{k} {v}" for k, v in judged.items() if k != "problems")
                print(f"  receiver {path}: {figures}")
            for line in diverged:
                print(f"  DIVERGED (seed {seed}, --size {args.size}): {line}")
            if args.json:  # after every run: a campaign cut short keeps what it found
                args.json.write_text(json.dumps({"size": args.size, "runs": runs}, indent=1, default=str))
    kinds = Counter(f["kind"] for r in runs for f in r["faults"])
    print(f"\n| size | runs | {' | '.join(FAULT_KINDS)} | divergent runs | minutes |")
    print(f"|---|---:|{'---:|' * len(FAULT_KINDS)}---:|---:|")
    divergent = sum(1 for r in runs if r["divergences"]) + any(j["problems"] for j in clean["receivers"].values())
    counts = " | ".join(str(kinds[k]) for k in FAULT_KINDS)
    print(f"| {args.size} | {len(runs)} | {counts} | {divergent} | {(time.monotonic() - started) / 60:.1f} |")
    return 1 if divergent else 0


if __name__ == "__main__":
    sys.exit(main())
