"""Browser trackers from npm (at the versions of examples/browser/package-lock.json) in
headless Chromium, on a shop page served from another origin than the worker's: Segment's
analytics-next bundled into the shop's own script with the worker as its CDN, and loaded
the usual way with Segment's snippet whose CDN host is the worker; RudderStack's JavaScript
SDK bundled, with the worker as its data plane and source configuration. The shopper logs
in at checkout and buys: one person with the anonymous past."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from selenium import webdriver

from ampelios.config import Settings
from ampelios.services.stack import http_json
from ampelios.services.static_site import static_site
from tests.conftest import require_tool
from tests.integration.conftest import Workers

pytestmark = pytest.mark.integration

TRACKERS = Path(__file__).resolve().parents[2] / "examples" / "browser"  # shop.js, rudderstack.js, snippet.js
WRITE_KEY = "shop-key"
SOURCE_ID = 5
REFLECTED_SECONDS = 60  # a call reaches /visitors well within this, or the test fails

SHOP = """<!doctype html><html><head><title>Shop</title>{head}</head><body><h1>Shop</h1></body></html>"""

# Three product views and an add-to-cart, each awaited until delivered; then who it was.
CALLS = """
const done = arguments[arguments.length - 1];
(async () => {
  await analytics.page();
  for (const id of ["355908", "248676", "111016"]) await analytics.track("Product Viewed", {product_id: id});
  await analytics.track("Product Added", {product_id: "111016"});
  done((await analytics.user()).anonymousId());
})().catch((error) => done("failed: " + error));
"""

# Logging in at checkout: who the visitor is, then a purchase (and the user's id).
LOGIN = """
const done = arguments[arguments.length - 1];
(async () => {
  await analytics.identify("bo", {email: "bo@shop.example"});
  await analytics.track("Order Completed", {order_id: "o-1", products: [{product_id: "111016"}]});
  done((await analytics.user()).id());
})().catch((error) => done("failed: " + error));
"""

# The same calls through RudderStack's SDK, once it has its source's configuration.
RUDDERSTACK_CALLS = """
const done = arguments[arguments.length - 1];
rudderanalytics.ready(() => {
  for (const id of ["355908", "248676", "111016"]) rudderanalytics.track("Product Viewed", {product_id: id});
  rudderanalytics.track("Product Added", {product_id: "111016"});
  done(rudderanalytics.getAnonymousId());
});
"""


@pytest.fixture
def node_modules() -> Path:
    """The trackers installed from npm (``make test`` runs ``npm ci`` in examples/browser)."""
    require_tool("node", "Debian: apt-get install nodejs npm")
    installed = TRACKERS / "node_modules"
    if not (installed / "@segment" / "analytics-next").is_dir():
        require_tool("examples/browser/node_modules", "npm ci --prefix examples/browser")
    return installed


def state_when_reflected(base: str, visitor: str, expected: list[int], kind: str = "anonymous") -> list[int]:
    """The views, add-to-carts and transactions of visitor ``kind:visitor`` once they are
    ``expected`` (or what they were when REFLECTED_SECONDS ran out)."""
    deadline, state = time.monotonic() + REFLECTED_SECONDS, None
    while time.monotonic() < deadline:
        code, answer = http_json("GET", f"{base}/visitors/{kind}:{quote(visitor)}?source_id={SOURCE_ID}")
        state = answer["state"] if code == 200 else None
        if state == expected:
            break
        time.sleep(0.2)
    return state


def run_calls(browser: webdriver.Chrome, script: str = CALLS) -> Any:
    browser.set_script_timeout(REFLECTED_SECONDS)
    answer = browser.execute_async_script(script)
    assert isinstance(answer, str) and not answer.startswith("failed"), answer
    return answer


def bundle(node_modules: Path, entry: str, site: Path) -> Path:
    """Bundle ``examples/browser/<entry>`` into ``site/shop.bundle.js`` as a site's build
    does, with a page that loads it; return ``site``."""
    site.mkdir()
    esbuild = node_modules / ".bin" / "esbuild"
    out = f"--outfile={site / 'shop.bundle.js'}"
    subprocess.run([esbuild, TRACKERS / entry, "--bundle", "--format=iife", out], check=True, capture_output=True)
    (site / "shop.html").write_text(SHOP.format(head='<script src="shop.bundle.js"></script>'))
    return site


@contextlib.contextmanager
def shop_and_worker(settings: Settings, workers: Workers, site: Path) -> Iterator[tuple[str, str]]:
    """The shop of ``site`` served on its own origin, and a worker that collects its
    calls (the shop's origin allowed): their URLs."""
    with static_site(site) as shop:
        worker = workers.start(settings.with_(write_keys={WRITE_KEY: SOURCE_ID}, cors_origins=(shop,)))
        yield shop, worker.base_url


def test_analytics_next_bundled_by_the_shop_sends_through_the_worker(
    settings: Settings, workers: Workers, browser: webdriver.Chrome, node_modules: Path, tmp_path: Path
):
    with shop_and_worker(settings, workers, bundle(node_modules, "shop.js", tmp_path / "site")) as (shop, base):
        browser.get(f"{shop}/shop.html?writeKey={WRITE_KEY}&collector={quote(base)}")
        anonymous_id = run_calls(browser)
        assert state_when_reflected(base, anonymous_id, [3, 1, 0]) == [3, 1, 0]

        # Batched, and the page closed before the batch was due: sent as the page goes.
        batching = quote('{"deliveryStrategy": {"strategy": "batching", "config": {"size": 50, "timeout": 60000}}}')
        browser.get(f"{shop}/shop.html?writeKey={WRITE_KEY}&collector={quote(base)}&segment={batching}")
        run_calls(browser)  # the same visitor (its id is in the shop's storage): three views more
        browser.get("about:blank")
        assert state_when_reflected(base, anonymous_id, [6, 2, 0]) == [6, 2, 0]

        # Logged in at checkout: one person, who viewed, added and bought.
        browser.get(f"{shop}/shop.html?writeKey={WRITE_KEY}&collector={quote(base)}")
        assert run_calls(browser, LOGIN) == "bo"
        assert state_when_reflected(base, "bo", [6, 2, 1], kind="user") == [6, 2, 1]
        assert state_when_reflected(base, anonymous_id, [6, 2, 1]) == [6, 2, 1]
    code, stats = http_json("GET", f"{base}/stats?source_id={SOURCE_ID}")
    assert (code, stats["rejected"], stats["visitors"]) == (200, 0, 1)


def test_rudderstack_s_sdk_bundled_by_the_shop_sends_through_the_worker(
    settings: Settings, workers: Workers, browser: webdriver.Chrome, node_modules: Path, tmp_path: Path
):
    with shop_and_worker(settings, workers, bundle(node_modules, "rudderstack.js", tmp_path / "site")) as (shop, base):
        browser.get(f"{shop}/shop.html?writeKey={WRITE_KEY}&collector={quote(base)}")
        anonymous_id = run_calls(browser, RUDDERSTACK_CALLS)
        assert state_when_reflected(base, anonymous_id, [3, 1, 0]) == [3, 1, 0]


def test_analytics_js_loaded_with_segment_s_snippet_from_the_worker(
    settings: Settings, workers: Workers, browser: webdriver.Chrome, node_modules: Path, tmp_path: Path
):
    host = f"127.0.0.1:{settings.web_port}"  # the worker's, as the snippet names its CDN
    snippet = subprocess.run(
        ["node", TRACKERS / "snippet.js", WRITE_KEY, host, "http"], check=True, capture_output=True, text=True
    ).stdout
    site = tmp_path / "site"
    site.mkdir()
    (site / "shop.html").write_text(SHOP.format(head=f"<script>{snippet}</script>"))
    with shop_and_worker(settings, workers, site) as (shop, base):
        assert base.rstrip("/") == f"http://{host}"
        browser.get(f"{shop}/shop.html")
        browser.set_script_timeout(REFLECTED_SECONDS)
        ready = browser.execute_async_script(
            "const done = arguments[arguments.length - 1]; analytics.ready(() => done(window.analytics.VERSION));"
        )
        assert ready  # the library the worker served has loaded, with the settings it served
        anonymous_id = run_calls(browser)
        assert state_when_reflected(base, anonymous_id, [3, 1, 0]) == [3, 1, 0]
