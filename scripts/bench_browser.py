"""From a browser call to ``/visitors`` answering it: Segment's analytics.js in headless
Chromium, on a shop page of another origin, sending to a worker of the embedded stack.

The shop's bundle (``examples/browser/shop.js``, analytics-next from npm, bundled with
esbuild) is loaded with the worker as its CDN; every call is a ``Product Viewed`` of a new
anonymous visitor (``probe-<i>``), sent at ``--rate`` calls per second. The latency of a
call is the first 200 of ``/visitors/anonymous:probe-<i>`` minus the moment the bench asked
the page to make it (the bench's own poller: :class:`ampelios.bench.probes.ProbeWatch`).
Needs chromium, chromedriver and ``npm ci --prefix examples/browser``. Run:

    .venv/bin/python scripts/bench_browser.py [--calls 1000] [--rate 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from ampelios.bench.harness import SOURCE_ID, percentiles
from ampelios.bench.probes import ProbeWatch
from ampelios.config import Settings
from ampelios.core.collect import visitor_id
from ampelios.core.partitioning import partition_for
from ampelios.services.processes import free_port
from ampelios.services.stack import Stack
from ampelios.services.static_site import static_site

SHOP = Path(__file__).resolve().parents[1] / "examples" / "browser"
WRITE_KEY = "bench-key"
PAGE = '<!doctype html><html><head><script src="shop.bundle.js"></script></head><body>Shop</body></html>'
CALL = 'analytics.track("Product Viewed", {product_id: "355908"}, {anonymousId: arguments[0]});'


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        yield driver
    finally:
        driver.quit()


async def measure(browser: webdriver.Chrome, base: str, calls: int, rate: float, partitions: int) -> ProbeWatch:
    """Make ``calls`` calls at ``rate`` per second and wait for each to be visible."""
    watch = ProbeWatch(base)
    async with aiohttp.ClientSession() as session, watch.watching(session, timeout=120):
        started = time.monotonic()
        for i in range(calls):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            probe = f"probe-{i}"
            visitor = visitor_id("anonymous", probe)
            watch.add(partition_for(SOURCE_ID, visitor, partitions), visitor, time.monotonic())
            await asyncio.to_thread(browser.execute_script, CALL, probe)
    return watch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls, each of a new visitor")
    parser.add_argument("--rate", type=float, default=20.0, help="calls per second")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ampelios-bench-browser-") as root:
        site = Path(root) / "site"
        site.mkdir()
        esbuild = SHOP / "node_modules" / ".bin" / "esbuild"
        bundle = f"--outfile={site / 'shop.bundle.js'}"
        subprocess.run(
            [esbuild, SHOP / "shop.js", "--bundle", "--format=iife", bundle], check=True, capture_output=True
        )
        (site / "shop.html").write_text(PAGE)
        with static_site(site) as shop:
            settings = Settings(
                state_dir=Path(root) / "state",
                data_dir=Path(root) / "data",
                web_port=free_port(),
                write_keys={WRITE_KEY: SOURCE_ID},
                cors_origins=(shop,),
            )
            with Stack(settings) as stack, chromium(Path(root) / "profile") as browser:
                assert stack.worker is not None
                base = stack.worker.base_url.rstrip("/")
                browser.get(f"{shop}/shop.html?writeKey={WRITE_KEY}&collector={base}")
                browser.set_script_timeout(60)
                browser.execute_async_script("const done = arguments[0]; analytics.ready(() => done(true));")
                watch = asyncio.run(measure(browser, base, args.calls, args.rate, stack.settings.partitions))
    p50, p99, top = percentiles(watch.latencies)
    figures = {
        "calls": args.calls,
        "rate": args.rate,
        "visible": len(watch.latencies),
        "p50_ms": round(p50) if p50 is not None else None,
        "p99_ms": round(p99) if p99 is not None else None,
        "max_ms": round(top) if top is not None else None,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
