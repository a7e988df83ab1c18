"""The segments as a terminal table with plain-words advice, and the drift alerts, for
``demo`` and ``status``."""

from __future__ import annotations

from typing import Any

from ampelios.core.journeys import FEATURE_NAMES


def segment_table(segments: list[dict[str, Any]]) -> str:
    """id, label, users, share and the mean member's six features, one row per segment."""
    total = sum(s["users"] for s in segments) or 1
    header = ["id", "label", "users", "share"] + [name.replace("_", " ") for name in FEATURE_NAMES]
    rows = [
        [str(s["id"]), s["label"], str(s["users"]), f"{100 * s['users'] / total:.1f}%"]
        + [f"{x:.3g}" for x in s["centroid"]]
        for s in segments
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def segment_report(segments: list[dict[str, Any]]) -> str:
    """The table, then what each segment's members do and what to do about it."""
    lines = [segment_table(segments), "", "What to do:"]
    for s in segments:
        lines.append(f"  {s['id']} {s['label']} ({100 * s['share']:.1f}%): {s['advice']}")
        lines.append(f"    {s['summary']}")
    return "\n".join(lines)


SIGNAL_NAMES = {
    "purchase_rate": "purchase rate (visitors who bought, of the day's visitors)",
    "conversion": "add-to-cart to purchase",
    "events_per_visitor": "events per visitor",
}


def alerts_report(alerts: list[dict[str, Any]]) -> str:
    """The drift alerts of ``/alerts`` in words, one line each, oldest first.

    >>> print(alerts_report([{"signal": "conversion", "label": None, "direction": "down", "before": 0.31,
    ...     "after": 0.023, "started_at": "2015-07-01T00:00:00Z", "recovered_at": "2015-08-01T00:00:00Z"}]))
    Changes in behaviour:
      add-to-cart to purchase fell from 31.0% to 2.3% from 2015-07-01; back to normal from 2015-08-01.
    """
    if not alerts:
        return "Changes in behaviour: none found."
    lines = ["Changes in behaviour:"]
    for a in alerts:
        what = SIGNAL_NAMES.get(a["signal"], f"share of {a['label']}")
        level = (lambda x: f"{x:.2f}") if a["signal"] == "events_per_visitor" else (lambda x: f"{100 * x:.1f}%")
        moved = "fell" if a["direction"] == "down" else "rose"
        line = f"  {what} {moved} from {level(a['before'])} to {level(a['after'])} from {a['started_at'][:10]}"
        back = f"; back to normal from {a['recovered_at'][:10]}." if a["recovered_at"] else "."
        lines.append(line + back)
    return "\n".join(lines)


def stats_line(source_id: int, stats: dict[str, Any]) -> str:
    """One sentence: what a source's segments are made of and how current they are."""
    version = "no model yet" if stats["model_version"] is None else f"model version {stats['model_version']}"
    current = f"{stats['lag']:,} records still to process" if stats["lag"] else "up to date"
    return (
        f"Site {source_id}: {stats['events']:,} events from {stats['visitors']:,} visitors, "
        f"{stats['rejected']:,} rows rejected, {version}, {current}."
    )


def k_report(quality: dict[str, Any]) -> str:
    """How well each k segments the visitors (``GET /segments/quality``), as a table, and
    which k is in use and which the rule chooses."""
    header = ["k", "inertia", "Davies-Bouldin", "smallest", "kinds", "actionable"]
    rows = [
        [
            f"{q['k']}{' *' if q['k'] == quality['k'] else ''}",
            f"{q['inertia']:.3f}",
            f"{q['davies_bouldin']:.3f}",
            f"{100 * q['smallest_share']:.2f}%",
            str(q["kinds"]),
            "yes" if q["actionable"] else "no",
        ]
        for q in quality["qualities"]
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(
        [
            f"Choosing k on {quality['visitors']:,} visitors (* the k in use; AMPELIOS_K={quality['setting']}):",
            *lines,
            f"AMPELIOS_K=auto chooses k = {quality['chosen']}: {quality['rule']}.",
        ]
    )
