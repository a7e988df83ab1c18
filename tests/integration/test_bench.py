"""``ampelios bench`` at a tiny size: every figure is there and adds up (no timing is judged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LABELS = [
    "limit: aiokafka, replay msgs",
    "limit: aiokafka, 1 event/msg",
    "ceiling: bare Faust, replay msgs",
    "ceiling: bare Faust, 1 event/msg",
    "Ampelios: replay end to end",
    "Ampelios: takeover after SIGKILL",
    "Ampelios: 1 event/msg",
    "Ampelios: steady 200 ev/s, 1 event/msg",
    "Ampelios: collector 200 ev/s, Segment batches",
    "Ampelios: webhooks 200 ev/s, 1 event/msg",
]


def bench(*args: str, tmpdir: Path | None = None, script: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMPELIOS_")}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    command = [str(ROOT / "scripts" / "bench.py")] if script else ["-m", "ampelios", "bench"]
    try:  # within pytest's own timeout (600 s), so that a hang shows how far the bench got
        return subprocess.run(
            [sys.executable, *command, *args], env=env, capture_output=True, text=True, timeout=540, cwd=ROOT
        )
    except subprocess.TimeoutExpired as exc:
        parts = [o if isinstance(o, str) else (o or b"").decode(errors="replace") for o in (exc.stdout, exc.stderr)]
        pytest.fail(f"the bench did not finish in {exc.timeout} s:\n{parts[0][-4000:]}\n{parts[1][-8000:]}")


def test_the_script_takes_the_commands_options_and_phases_are_checked():
    command, script = bench("--help"), bench("--help", script=True)
    assert command.returncode == script.returncode == 0, command.stderr + script.stderr
    assert command.stdout.split("Options:")[1] == script.stdout.split("Options:")[1]
    for option in ("--events", "--single-events", "--rate", "--steady-seconds", "--json", "--phases", "--seed"):
        assert option in command.stdout
    wrong = bench("--phases", "limit,warp")
    assert wrong.returncode == 2 and "choose among" in wrong.stderr


def test_a_tiny_bench_reports_every_figure_consistently(tmp_path: Path, scratch: Path):
    out = tmp_path / "bench.json"
    args = ("--events", "3000", "--single-events", "500", "--rate", "200", "--steady-seconds", "3")
    result = bench(*args, "--json", str(out), tmpdir=scratch)
    assert result.returncode == 0, result.stdout + result.stderr
    for label in LABELS:
        assert label in result.stdout

    report = json.loads(out.read_text())
    assert report["nproc"] >= 1 and report["command"][1:] == ["bench", *args, "--json", str(out)]
    assert (report["events"], report["single_events"], report["partitions"]) == (3000, 500, 8)
    assert report["distinct_events"] == 3000 and 0 < report["visitors"] < 3000
    rows = report["rows"]
    ids = ["limit.batched", "limit.single", "ceiling.batched", "ceiling.single", "replay", "takeover"]
    ids += ["single", "steady", "collector", "webhooks"]
    assert list(rows) == ids
    for row in rows.values():
        assert row["error"] is None and row["seconds"] >= 0 and {"events_per_s", "messages_per_s"} <= set(row), row

    for shape, messages, events in (("batched", report["replay_messages"], 3000), ("single", 500, 500)):
        assert rows[f"limit.{shape}"]["read"] == rows[f"limit.{shape}"]["messages"] == messages
        assert rows[f"ceiling.{shape}"]["counted"] == rows[f"ceiling.{shape}"]["messages"] == messages
        assert rows[f"limit.{shape}"]["events"] == rows[f"ceiling.{shape}"]["events"] == events

    replay = rows["replay"]
    assert replay["reflected_events"] == replay["expected_events"] == replay["events"] == 3000
    assert (replay["job_state"], replay["rows_rejected"], replay["visitors"]) == ("done", 0, report["visitors"])
    takeover = rows["takeover"]
    assert takeover["reflected_events"] == 3000 and takeover["stats_at_end"]["lag"] == 0
    assert 0 < takeover["healthy_seconds"] <= takeover["seconds"]
    recovered = takeover["changelog_records_recovered"]  # the killed worker's files were kept
    assert recovered["journeys"] <= report["partitions"] and recovered["segment-state"] <= 1
    single = rows["single"]
    assert single["reflected_events"] == single["expected_events"] == 500
    for row in (replay, single):
        assert row["stats_at_end"]["lag"] == 0 and 0 < row["counted_seconds"] <= row["seconds"]
    assert single["percent_of_ceiling"] > 0

    steady = rows["steady"]
    assert 0 < steady["probes"] == steady["probes_visible"] and steady["probes_not_visible"] == 0
    latency = steady["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    after_ack = steady["after_ack_latency_ms"]  # the broker acknowledged a probe before it was visible
    assert 0 < after_ack["p50"] <= after_ack["p99"] <= after_ack["max"] <= latency["max"]
    assert steady["events"] == steady["messages"] > steady["probes"]
    assert steady["stats_at_end"]["events"] <= steady["sent_distinct_events"] == steady["events"]

    collector = rows["collector"]  # Segment batches: nothing lost, every probe seen
    assert 0 < collector["probes"] == collector["probes_visible"] and collector["probes_not_visible"] == 0
    assert collector["reflected_events"] == collector["sent_distinct_events"] > collector["probes"]
    assert 0 < collector["latency_ms"]["p50"] <= collector["latency_ms"]["p99"] <= collector["latency_ms"]["max"]

    webhooks = rows["webhooks"]  # every change since the subscription reached the receiver
    assert webhooks["members_delivered"] > 0 and webhooks["changes_missing"] == 0
    assert webhooks["changes_delivered"] == webhooks["changes_expected"] >= webhooks["probes_moved"] > 0
    assert 0 < webhooks["latency_ms"]["p50"] <= webhooks["latency_ms"]["p95"] <= webhooks["latency_ms"]["max"]

    for row in (replay, single, steady, collector, webhooks):
        assert row["peak_rss_mib"] > 0 and row["rocksdb_bytes"] > 0
    assert list(scratch.iterdir()) == []  # the temporary directory is gone ...
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(scratch) not in ps  # ... and nothing started in it still runs


def test_a_tiny_soak_samples_the_memory_of_the_local_stack(tmp_path: Path, scratch: Path):
    """The soak phase runs only when named, on the local stack as ``ampelios up`` runs it
    (Apache Kafka), and samples each process's memory at the start and at the end."""
    out = tmp_path / "soak.json"
    args = ("--events", "2000", "--single-events", "100", "--rate", "200", "--soak-seconds", "3", "--phases", "soak")
    result = bench(*args, "--json", str(out), tmpdir=scratch)
    assert result.returncode == 0, result.stdout + result.stderr
    (soak,) = json.loads(out.read_text())["rows"].values()
    assert soak["local_broker"] == "kafka" and soak["messages"] == soak["events"] >= 400
    samples = soak["samples_pss_mib"]
    assert samples[0]["sent"] == 0 and samples[-1]["sent"] == soak["messages"]
    for sample in samples:
        assert sample["broker"] > 0 and sample["postgres"] > 0 and sample["worker"] > 0
        assert sample["total"] == sample["broker"] + sample["postgres"] + sample["worker"]
    assert soak["stats_at_end"]["events"] == soak["messages"] and soak["stats_at_end"]["lag"] == 0
    assert list(scratch.iterdir()) == []


def test_the_export_benchmark_streams_the_largest_segment_whole_in_every_format(tmp_path: Path, scratch: Path):
    out = tmp_path / "export.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMPELIOS_")} | {"TMPDIR": str(scratch)}
    command = [sys.executable, str(ROOT / "scripts" / "bench_export.py"), "--events", "5000", "--json", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert [r["format"] for r in report["rows"]] == ["csv", "ndjson", "json pages of 10,000"]
    for row in report["rows"]:
        assert row["members"] == row["expected"] == report["segment"]["users"] > 0
        assert row["mib"] > 0 and row["worker_rss_mib_peak"] >= row["worker_rss_mib_before"] > 0
    assert list(scratch.iterdir()) == []


def test_the_retention_bench_prints_a_year_at_a_tiny_size(tmp_path: Path):
    out = tmp_path / "retention.json"
    command = [sys.executable, str(ROOT / "scripts" / "bench_retention.py"), "--visitors", "600"]
    args = ["--transitions", "20", "--snapshot-minutes", "720", "--json", str(out)]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| month | retention 60 / 30 days | everything kept |" in result.stdout
    kept, everything = json.loads(out.read_text())["runs"].values()
    assert [m["month"] for m in kept] == list(range(1, 13))
    transitions = [m["tables"]["segment_transitions"]["rows"] for m in (kept[-1], everything[-1])]
    assert transitions == [60 * 20 + 1, 360 * 20]  # 20 a day: the last 60 days (to the newest), the year
