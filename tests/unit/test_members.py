"""A member listing's cursor: opaque text that gives back the pinned model and the place."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ampelios.api.members import MemberCursor
from ampelios.core.model import update
from ampelios.core.population import Population

MODEL = update(None, Population({(1, 0, 0, 1): 900, (3, 0, 0, 2): 300, (30, 3, 2, 4): 40, (2, 1, 1, 1): 9}), k=4)


@given(st.integers(0, 2**31 - 1), st.integers(0, 3), st.integers(0, 2**16 - 1), st.integers(-1, 2**63 - 1))
def test_a_cursor_gives_back_its_model_and_place(source_id, segment, partition, after):
    cursor = MemberCursor(source_id, segment, MODEL, partition, after)
    token = cursor.token()
    back = MemberCursor.parse(token)
    assert token.isascii() and all(c.isalnum() or c in "-_" for c in token)  # as it is, in a URL
    assert (back.source_id, back.segment, back.partition, back.after) == (source_id, segment, partition, after)
    assert back.model.version == MODEL.version and back.model.labels[segment] == MODEL.labels[segment]
    features = np.array([[1, 0, 0, 1, 1, 0], [30, 3, 2, 4, 7.5, 0.07], [2, 1, 1, 1, 2, 0.5]], dtype=float)
    assert back.model.assign(features).tolist() == MODEL.assign(features).tolist()


@pytest.mark.parametrize("token", ["", "not-a-cursor", "AAAA", MemberCursor(1, 0, MODEL).token()[:-20]])
def test_anything_else_is_no_cursor(token):
    with pytest.raises(ValueError, match="names no page"):
        MemberCursor.parse(token)
