"""The reference documents cover what the code has: every API operation, every setting."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from ampelios.config import Settings
from ampelios.stream.openapi import openapi_document

ROOT = Path(__file__).resolve().parents[2]


def test_api_md_has_every_operation_of_the_openapi_document_and_no_other():
    operations = {
        f"{method.upper()} {path}" for path, item in openapi_document(False)["paths"].items() for method in item
    }
    documented = set(re.findall(r"^## ((?:GET|POST|PUT|DELETE) \S+)$", (ROOT / "docs/api.md").read_text(), re.M))
    assert documented == operations, "regenerate docs/api.md: .venv/bin/python scripts/api_doc.py"


def test_every_setting_is_in_the_readme_table_and_in_configuration_md():
    names = {f"AMPELIOS_{f.name.upper()}" for f in fields(Settings) if f.name != "k_by_source"}
    readme = set(re.findall(r"^\| `(AMPELIOS_[A-Z_]+)` \|", (ROOT / "README.md").read_text(), re.M))
    reference = set(re.findall(r"^\| `(AMPELIOS_[A-Z_]+)` \|", (ROOT / "docs/configuration.md").read_text(), re.M))
    assert readme == names and reference == names
