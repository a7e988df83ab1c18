"""The reference documents cover what the code has: every API operation, every setting."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

from ampelios.api.openapi import openapi_document
from ampelios.api.routes import OPERATIONS
from ampelios.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_api_md_has_every_operation_of_the_openapi_document_and_no_other():
    operations = {
        f"{method.upper()} {path}"
        for path, item in openapi_document(OPERATIONS, False)["paths"].items()
        for method in item
    }
    documented = set(re.findall(r"^## ((?:GET|POST|PUT|DELETE) \S+)$", (ROOT / "docs/api.md").read_text(), re.M))
    assert documented == operations, "regenerate docs/api.md: .venv/bin/python scripts/api_doc.py"


def test_every_setting_is_in_the_readme_table_and_in_configuration_md():
    names = {f"AMPELIOS_{f.name.upper()}" for f in fields(Settings) if f.name != "k_by_source"}
    readme = set(re.findall(r"^\| `(AMPELIOS_[A-Z_]+)` \|", (ROOT / "README.md").read_text(), re.M))
    reference = set(re.findall(r"^\| `(AMPELIOS_[A-Z_]+)` \|", (ROOT / "docs/configuration.md").read_text(), re.M))
    assert readme == names and reference == names


def test_the_readme_examples_are_of_the_demo_data():
    """The visitor and the counts the README's HTTP examples show are those of the
    events ``make demo`` generates (100,000, seed 0)."""
    from ampelios.core.events import ADDTOCART, TRANSACTION, VIEW
    from ampelios.core.generate import generate_events
    from ampelios.services.demo import SOURCE_ID

    readme = (ROOT / "README.md").read_text()
    visitor, state = re.search(r'\{"visitorid": (\d+), .*?"state": (\[\d+, \d+, \d+\])\}\]', readme).groups()
    events = generate_events(100_000, seed=0)
    mine = events.event[events.visitorid == int(visitor)]
    assert json.loads(state) == [int((mine == code).sum()) for code in (VIEW, ADDTOCART, TRANSACTION)]
    stats = re.search(r'# \{"events": (\d+), "visitors": (\d+),', readme).groups()
    assert [int(n) for n in stats] == [len(events), len(set(events.visitorid.tolist()))]
    assert f"/visitors/{visitor}?source_id={SOURCE_ID}" in readme
