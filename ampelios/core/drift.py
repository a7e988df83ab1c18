"""Drift alerts: which per-period signals of a source shifted, when, by how much.

The **signals** of a period are ratios of counts of its own activity
(:mod:`ampelios.core.periods`), so that a marketer reads them directly and so that their
noise is known from the counts:

- ``purchase_rate``: visitors who bought / visitors with events;
- ``conversion``: transactions / add-to-carts;
- ``events_per_visitor``: events / visitors with events;
- ``share`` of each segment: its visitors with events / visitors with events (under the
  current model, so that a refit never shows as a shift).

A signal whose counts are large enough is judged on **blocks** of periods: one period where
counts are large, a few where they are smaller (a block expects at least MIN_COUNT of the
rarer outcome during the warm-up), so that one outcome more or less is never a shift. A
block's value is turned into a z-score against the BASELINE_PERIODS before it (their
median; the larger of their spread, as a median absolute deviation, and the block's
sampling error): robust statistics, so that the first periods of a new level entering the
baseline do not hide it. River's :class:`~river.drift.PageHinkley` (a CUSUM: it
accumulates z beyond DRIFT and flags past THRESHOLD) watches the z-scores after
WARMUP_PERIODS.

A **rare** signal (a ratio whose block would span more than one period: about one
purchase a day, say) is judged per period on its counts instead (:func:`count_shifts`): a
likelihood-ratio scan of the windows of up to SCAN_PERIODS periods ending at each period,
against the rate of the SCAN_BASELINE periods before them. Blocks of ten days against two
earlier blocks cannot see a three-week drop of one purchase a day; the counts can (ten
days without a purchase where ten were expected). ``docs/history.md`` gives both choices
with their measured delays and false alarms (``scripts/bench_drift.py``).

A detection is a :class:`Shift`: where the level changed (the split before the detection
that best separates two levels), the level before and after, and the direction. A shift
opposite to the signal's open one recovers it. Everything is a function of the period
tables and the model: the same events give the same alerts, however they arrived.

>>> import numpy as np
>>> visitors = np.full(60, 1000)
>>> buyers = np.where(np.arange(60) < 40, 20, 2)  # purchases fall tenfold on period 40
>>> [(s.direction, s.started, s.detected) for s in shifts(buyers, visitors, binomial=True)]
[('down', 40, 43)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

BASELINE_PERIODS = 14  # the level a block is compared with: the periods before it
WARMUP_PERIODS = 28  # periods of history before a signal is judged
MIN_COUNT = 10  # the rarer outcome expected per block (sets the block's periods)
MIN_VISITORS = 1000  # visitors per block of events per visitor (a few heavy visitors average out)
MAX_BLOCK = 14  # periods per block at most
GAP_PERIODS = 7  # the newest periods are left out of a block's baseline: a new level shows longer
MIN_BASELINE_BLOCKS = 5  # blocks of a new level before it is judged again
MIN_EFFECT = 0.2  # an alert needs the level to move by a fifth of itself at least
DRIFT = 1.0  # PageHinkley's delta, in z (a block must be more than 1 sigma off to count)
THRESHOLD = 10.0  # PageHinkley's lambda, in z, for blocks of one period (divided by sqrt(periods))
MIN_THRESHOLD = 4.0  # ... and no lower
CLIP = 8.0  # z beyond this counts as this: one absurd block (a single heavy visitor) cannot alert alone
SHARE_BURN_IN = 28  # first periods of a history, left out of the segments' shares (see source_alerts)
SCAN_PERIODS = 28  # a rare signal's longest window of a new level
SCAN_BASELINE = 56  # the periods whose rate a rare signal's windows are compared with
SCAN_THRESHOLD = 12.0  # log-likelihood ratio (over the baseline's dispersion) that flags a window
SCAN_MIN_EXPECTED = 1.0  # a window is judged only when it expects one outcome at least
SCAN_NEW_LEVEL = 14  # periods of a new level before a rare signal is judged again
HISTORY_PERIODS = SCAN_PERIODS + GAP_PERIODS + SCAN_BASELINE  # the periods the newest judgement reads


@dataclass(frozen=True)
class Shift:
    """A detected change of a signal: from period ``started`` on (the first period of the
    new level), detected at the end of period ``detected``; mean levels before and after."""

    direction: str  # "up" or "down"
    started: int
    detected: int
    before: float
    after: float


def block_size(num: np.ndarray, den: np.ndarray, binomial: bool) -> int:
    """Periods per block: enough that a block expects MIN_COUNT of the rarer outcome
    over the warm-up (the numerator, or for a ratio the failures when they are rarer);
    for events per visitor, whose visitors' counts have a heavy tail, MIN_VISITORS."""
    warm = slice(0, WARMUP_PERIODS)
    periods = max(1, len(num[warm]))
    n, total = float(num[warm].sum()), float(den[warm].sum())
    count, need = (min(n, total - n), MIN_COUNT) if binomial else (total, MIN_VISITORS)
    if count <= 0:
        return MAX_BLOCK
    return int(min(MAX_BLOCK, max(1, math.ceil(need * periods / count))))


def shifts(num: np.ndarray, den: np.ndarray, binomial: bool) -> list[Shift]:
    """The shifts of the signal ``num / den`` over consecutive periods (index 0 is the
    first), oldest first; ``binomial``: ``num`` counts successes among ``den`` (else
    events per ``den``, Poisson). Periods are judged in blocks (:func:`block_size`), a
    rare ratio per period on its counts (:func:`count_shifts`)."""
    from river.drift import PageHinkley  # slow to import: the worker imports it in a thread at start

    m = block_size(num, den, binomial)
    if binomial and m > 1:
        return count_shifts(num, den)
    n_blocks = len(num) // m
    if n_blocks == 0:
        return []
    bnum = num[: n_blocks * m].reshape(n_blocks, m).sum(axis=1).astype(np.float64)
    bden = den[: n_blocks * m].reshape(n_blocks, m).sum(axis=1).astype(np.float64)
    value = bnum / np.maximum(bden, 1.0)
    base = max(2, math.ceil(BASELINE_PERIODS / m))
    warm = max(base, math.ceil(WARMUP_PERIODS / m))
    # PageHinkley measures z against its own running mean since it started: it starts
    # as soon as z can be computed, and judges only after the warm-up.
    threshold = max(MIN_THRESHOLD, THRESHOLD / math.sqrt(m))  # coarser blocks are judged less often
    detector = PageHinkley(min_instances=warm - base + 1, delta=DRIFT, threshold=threshold, alpha=1.0, mode="both")
    found: list[Shift] = []
    since = 0  # the first block of the current level
    for t in range(base, n_blocks):
        if t - since < MIN_BASELINE_BLOCKS:
            continue  # after a shift, the new level is learnt before it is judged
        gap = min(GAP_PERIODS // m, t - since - MIN_BASELINE_BLOCKS)  # the newest blocks wait to enter
        ref = slice(max(since, t - gap - base), t - gap)
        pooled = (bnum[ref].sum() + 0.5) / (bden[ref].sum() + 1.0)
        variance = pooled * (1.0 - min(pooled, 1.0)) if binomial else pooled
        level = float(np.median(value[ref]))
        spread = 1.4826 * float(np.median(np.abs(value[ref] - level)))  # robust to a shift entering the baseline
        sigma = max(spread, math.sqrt(variance / max(bden[t], 1.0)))
        detector.update(float(np.clip((value[t] - level) / sigma, -CLIP, CLIP)))
        if detector.drift_detected:
            split = _split(value, max(since, t - base), t)
            before = float(value[max(since, split - base) : split].mean())
            after = float(value[split : t + 1].mean())
            found.append(Shift("up" if after > before else "down", split * m, t * m + m - 1, before, after))
            since = split
            detector = PageHinkley(min_instances=1, delta=DRIFT, threshold=threshold, alpha=1.0, mode="both")
    return found


def count_shifts(num: np.ndarray, den: np.ndarray) -> list[Shift]:
    """The shifts of a rare ratio ``num / den`` (successes among trials per period),
    oldest first, judged on its counts: at each period t after the warm-up, every window
    of up to SCAN_PERIODS periods ending at t is compared with the pooled rate ``p`` of
    the SCAN_BASELINE periods before, leaving the newest GAP_PERIODS out (as the blocks
    do). A window that counts ``x`` successes where ``e = p * trials`` were expected
    scores the Poisson log-likelihood ratio ``x ln(x / e) - (x - e)``, divided by the
    baseline's dispersion (the periods' counts vary more than Poisson when successes come
    in clumps: at least 1). The best window past SCAN_THRESHOLD is a shift that began at
    its first period; the new level is learnt for SCAN_NEW_LEVEL periods before the
    signal is judged again.

    >>> buys = np.where(np.arange(100) < 60, 1, 0)  # one purchase a day, then none
    >>> [(s.direction, s.started, s.detected) for s in count_shifts(buys, np.full(100, 80))]
    [('down', 60, 73)]
    """
    num, den = num.astype(np.float64), den.astype(np.float64)
    found: list[Shift] = []
    since = 0  # the first period of the current level
    for t in range(WARMUP_PERIODS, len(num)):
        if t - since < SCAN_NEW_LEVEL:
            continue
        gap = min(GAP_PERIODS, t - since - SCAN_NEW_LEVEL)
        ref = slice(max(since, t - gap - SCAN_BASELINE), t - gap)
        p = (num[ref].sum() + 0.5) / (den[ref].sum() + 1.0)
        expected = den[ref] * p
        judged = expected > 0
        variance = expected[judged] * (1.0 - min(p, 1.0))
        dispersion = float(((num[ref][judged] - expected[judged]) ** 2 / variance).sum() / max(judged.sum() - 1, 1))
        first = max(since, t - SCAN_PERIODS + 1)
        x = np.cumsum(num[first : t + 1][::-1])[::-1]  # successes of the windows [first + i, t]
        e = p * np.cumsum(den[first : t + 1][::-1])[::-1]
        ratio = np.where(x > 0, x * np.log(np.maximum(x, 1.0) / np.maximum(e, 1e-12)), 0.0) - (x - e)
        score = np.where(e >= SCAN_MIN_EXPECTED, ratio / max(dispersion, 1.0), 0.0)
        best = int(np.argmax(score))
        if score[best] > SCAN_THRESHOLD:
            start = first + best
            after = float(num[start : t + 1].sum() / max(den[start : t + 1].sum(), 1.0))
            found.append(Shift("up" if after > p else "down", start, t, float(p), after))
            since = start
    return found


def _split(value: np.ndarray, lo: int, t: int) -> int:
    """The block in ``(lo, t]`` where the new level most likely began: the split that
    maximizes the difference of the means on either side, weighted as a two-sample
    statistic."""
    best, best_score = t, -1.0
    for s in range(lo + 1, t + 1):
        left, right = value[lo:s], value[s : t + 1]
        score = abs(left.mean() - right.mean()) * math.sqrt(len(left) * len(right) / (len(left) + len(right)))
        if score > best_score:
            best, best_score = s, score
    return best


@dataclass(frozen=True)
class Alert:
    """A shift of one signal of a source, and its recovery if a later opposite shift
    came. Periods are indices (the caller turns them into times)."""

    signal: str
    segment: int | None
    shift: Shift
    recovered: Shift | None = None
    first: int = 0  # the index of period 0 in the source's whole history

    @property
    def key(self) -> str:
        """Stable for the same shift: signal, segment, direction and start (counted in
        the source's whole history, so the same however many old periods were folded)."""
        segment = "" if self.segment is None else self.segment
        return f"{self.signal}:{segment}:{self.shift.direction}:{self.shift.started + self.first}"


def alerts_of(signal: str, segment: int | None, found: list[Shift], first: int = 0) -> list[Alert]:
    """Shifts as alerts: a shift opposite to the open alert's direction recovers it (and
    opens none); any other shift opens a new alert. Shifts smaller than MIN_EFFECT of
    the level before are left out: significant, but too small to act on. ``first``: see
    :func:`source_alerts`."""
    alerts: list[Alert] = []
    open_at: int | None = None
    for shift in found:
        if abs(shift.after - shift.before) < MIN_EFFECT * abs(shift.before):
            continue
        if open_at is not None and shift.direction != alerts[open_at].shift.direction:
            alerts[open_at] = Alert(signal, segment, alerts[open_at].shift, shift, first)
            open_at = None
        else:
            alerts.append(Alert(signal, segment, shift, first=first))
            open_at = len(alerts) - 1
    return alerts


def source_alerts(activity: np.ndarray, visitors: np.ndarray, closed: int, first: int = 0) -> list[Alert]:
    """Every alert of a source from its period tables: ``activity`` (periods, 5) in the
    order of ``ACTIVITY_NAMES`` and ``visitors`` (periods, k) per segment, of which the
    first ``closed`` periods are complete (the last period with events is still open);
    ``first`` is the index of period 0 in the source's whole history (older periods
    folded away, see :meth:`ampelios.core.periods.PeriodPopulations.fold`).

    The segments' shares leave out the first SHARE_BURN_IN periods of the history: a
    segment is a kind of journey, and in the first weeks of a history few journeys have a
    past (returning visitors whose earlier visits came before the first event are new to
    it), so the shares of segments that need one -- repeat buyers, returning browsers --
    rise for weeks without anyone behaving differently."""
    act, seg = activity[:closed].astype(np.int64), visitors[:closed].astype(np.int64)
    people, buyers, views, carts, buys = act.T
    signals: list[tuple[str, int | None, np.ndarray, np.ndarray, bool]] = [
        ("purchase_rate", None, buyers, people, True),
        ("conversion", None, buys, carts, True),
        ("events_per_visitor", None, views + carts + buys, people, False),
    ]
    signals += [("share", j, seg[:, j], seg.sum(axis=1), True) for j in range(seg.shape[1])]
    alerts: list[Alert] = []
    for name, segment, num, den, binomial in signals:
        skip = max(0, SHARE_BURN_IN - first) if name == "share" else 0
        found = shifts(num[skip:], den[skip:], binomial)
        found = [replace(s, started=s.started + skip, detected=s.detected + skip) for s in found]
        alerts += alerts_of(name, segment, found, first)
    return sorted(alerts, key=lambda a: (a.shift.detected, a.key))
