"""The dashboard in a real browser (headless Chromium): the cards say what /view says, a
replay started from the page runs to the end, and the page refreshes itself.

``make screenshot`` runs this test with ``--screenshot docs/img/dashboard.png``: the
README's picture of the dashboard comes from here."""

from __future__ import annotations

import shutil
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from ampelios.config import Settings
from ampelios.core.generate import Drop, Scenario, generate_events
from ampelios.services.stack import WorkerProcess, http_json
from tests.integration.conftest import replay, write_events

pytestmark = pytest.mark.integration

JULY, AUGUST = (round(datetime(2015, m, 1, tzinfo=UTC).timestamp() * 1000) for m in (7, 8))


# label -> colour of every card, and of every dataset of each chart, read at one moment
COLOURS = """
const colours = (pairs) => Object.fromEntries(pairs);
return {
  cards: colours([...document.querySelectorAll("#cards .card")].map(
    (card) => [card.querySelector(".label").textContent.trim(), card.dataset.color])),
  shares: colours(Chart.getChart("shares").data.datasets.map((d) => [d.label, d.borderColor])),
  profile: colours(Chart.getChart("profile").data.datasets.map((d) => [d.label, d.backgroundColor])),
};
"""

# the charts have been laid out again for the window's width
CHARTS_FIT = """
return ["shares", "profile"].every((id) => {
  const chart = Chart.getChart(id);
  return chart.width > 0 && chart.width <= chart.canvas.parentNode.clientWidth;
});
"""

# What a reader would see as broken: anything wider than the window or than its box, chart
# tick labels on top of each other, a count of one with a plural noun.
LAYOUT_PROBLEMS = """
const problems = [];
const page = document.documentElement;
if (page.scrollWidth > page.clientWidth) problems.push(`page ${page.scrollWidth}px wide in ${page.clientWidth}px`);
for (const box of document.querySelectorAll(".card, .card *, .panel, .status, header")) {
  if (box.scrollWidth > box.clientWidth + 1 && getComputedStyle(box).overflowX !== "hidden")
    problems.push(`${box.className || box.tagName} overflows: ${box.scrollWidth}px in ${box.clientWidth}px`);
}
for (const id of ["shares", "profile"]) {
  const chart = Chart.getChart(id);
  for (const axis of ["x", "y"]) {
    const scale = chart.scales[axis];
    const font = Chart.helpers.toFont(scale.options.ticks.font);
    chart.ctx.save();
    chart.ctx.font = font.string;
    const shown = scale.ticks
      .map((tick, i) => ({ lines: [].concat(tick.label ?? []).filter((l) => l !== ""), at: scale.getPixelForTick(i) }))
      .filter((tick) => tick.lines.length)
      .map((tick) => ({
        ...tick,
        size: axis === "x" ? Math.max(...tick.lines.map((l) => chart.ctx.measureText(String(l)).width))
                           : tick.lines.length * font.lineHeight,
      }));
    chart.ctx.restore();
    if (axis === "x" && scale.labelRotation) problems.push(`${id}: x labels rotated`);
    for (let i = 1; i < shown.length; i++) {
      const gap = Math.abs(shown[i].at - shown[i - 1].at), need = (shown[i].size + shown[i - 1].size) / 2;
      if (gap < need) problems.push(`${id} ${axis}: "${shown[i - 1].lines}" and "${shown[i].lines}" overlap`);
    }
  }
}
const words = document.body.innerText;
const nouns = "events|visitors|rows|records|visits|views|add-to-carts|purchases|members";
const plural = words.match(new RegExp(`(?<![\\\\d.,])1 (${nouns})\\\\b`));
if (plural) problems.push(`"${plural[0]}"`);
return problems;
"""


def text(element) -> str:
    return element.get_attribute("textContent").strip()


def test_the_dashboard_shows_the_segments_and_runs_a_replay(
    settings: Settings, worker: WorkerProcess, browser: webdriver.Chrome, tmp_path: Path, request
):
    events = generate_events(300_000, seed=5, scenario=Scenario(drops=(Drop(JULY, AUGUST),)))
    write_events(settings.data_dir / "events.csv", events)
    write_events(settings.data_dir / "more.csv", generate_events(5_000, seed=6))
    base = worker.base_url
    replay(base, "events.csv")
    view = http_json("GET", f"{base}/view?source_id=1")[1]

    browser.get(base + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#cards .card")) == len(view))
    cards = browser.find_elements(By.CSS_SELECTOR, "#cards .card")
    names = [text(c.find_element(By.CSS_SELECTOR, ".label")) for c in cards]
    shown = [(int(c.get_attribute("data-segment")), n, c.get_attribute("data-users")) for c, n in zip(cards, names)]
    assert shown == [(s["id"], s["label"], str(s["users"])) for s in view]
    for card, segment in zip(cards, view):
        assert f"{segment['users']:,}" in text(card.find_element(By.CSS_SELECTOR, ".size"))
        assert text(card.find_element(By.CSS_SELECTOR, ".advice")) == segment["advice"]
        assert card.get_attribute("data-action") == segment["action"]
        link = card.find_element(By.CSS_SELECTOR, "a.download")  # the whole segment, as CSV
        assert link.get_attribute("href") == f"{base}/segments/{segment['id']}/members?source_id=1&format=csv"
        rows = urllib.request.urlopen(link.get_attribute("href"), timeout=60).read().decode().splitlines()
        assert len(rows) == 1 + segment["users"] and f"{segment['users']:,} members" in text(link)
    before = http_json("GET", f"{base}/stats?source_id=1")[1]["events"]
    assert browser.find_element(By.ID, "status").get_attribute("data-events") == str(before)

    # the purchases that fell in July: a banner line per alert, a marker on the chart
    alerts = http_json("GET", f"{base}/alerts?source_id=1")[1]["alerts"]
    assert any(a["signal"] == "conversion" and a["direction"] == "down" for a in alerts), alerts
    lines = browser.find_elements(By.CSS_SELECTOR, "#alerts p[data-signal]")
    assert sorted(line.get_attribute("data-signal") for line in lines) == sorted(a["signal"] for a in alerts)
    fell = next(text(line) for line in lines if line.get_attribute("data-signal") == "conversion")
    assert fell.startswith("Add-to-cart to purchase fell from") and "from Jul 1, 2015" in fell

    Select(browser.find_element(By.ID, "file")).select_by_value("more.csv")
    browser.find_element(By.ID, "replay").click()
    WebDriverWait(browser, 300).until(lambda b: b.find_element(By.ID, "job").get_attribute("data-state") == "done")
    job = browser.find_element(By.ID, "job")
    assert (job.get_attribute("data-rows-sent"), job.get_attribute("data-rows-rejected")) == ("5000", "0")
    assert browser.find_element(By.ID, "progress").get_attribute("value") == "1"
    after = http_json("GET", f"{base}/stats?source_id=1")[1]["events"]
    assert after > before
    # the page refreshes itself: the status counts the new events without a reload
    wait.until(lambda b: b.find_element(By.ID, "status").get_attribute("data-events") == str(after))

    browser.find_element(By.ID, "visitor").send_keys(str(int(events.visitorid[0])))
    browser.find_element(By.CSS_SELECTOR, "#lookup button").click()
    wait.until(lambda b: text(b.find_element(By.ID, "visitor-result")).startswith(f"Visitor {events.visitorid[0]}:"))
    answer = http_json("GET", f"{base}/visitors/{events.visitorid[0]}?source_id=1")[1]
    reasons = [text(li) for li in browser.find_elements(By.CSS_SELECTOR, "#visitor-result .why li")]
    assert reasons == [r["says"] for r in answer["why"]["reasons"]] and reasons

    # one colour per segment: its card, its line and its bars
    colours = browser.execute_script(COLOURS)
    assert len(set(colours["cards"].values())) == len(colours["cards"]) == len(view)
    for chart in ("shares", "profile"):
        drawn = colours[chart]
        assert drawn and all(colours["cards"][label] == colour for label, colour in drawn.items()), colours

    for width, name in ((1400, "dashboard.png"), (390, "dashboard-phone.png")):
        browser.set_window_size(width, 1900)
        wait.until(lambda b: b.execute_script(CHARTS_FIT))
        assert browser.execute_script(LAYOUT_PROBLEMS) == [], width
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(width, height)  # the whole page in one picture
        browser.execute_script("window.scrollTo(0, 0)")
        shot = tmp_path / name
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if request.config.getoption("--screenshot"):
            shutil.copyfile(shot, Path(request.config.getoption("--screenshot")).with_name(name))
