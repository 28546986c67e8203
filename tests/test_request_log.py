"""Each answer is logged once: jupyter_server's request log, not a second line from tornado for a 4xx."""

from __future__ import annotations

import logging

import pytest
from tornado.httpclient import HTTPClientError


@pytest.mark.parametrize(("params", "status"), [({"endpoint": "nope"}, 404), ({"endpoint": ["not", "text"]}, 422)])
async def test_a_4xx_is_logged_once(api, caplog, params, status):
    caplog.set_level(logging.INFO)
    with pytest.raises(HTTPClientError) as info:
        await api("help", method="POST", **params)
    assert info.value.code == status
    lines = [r.getMessage() for r in caplog.records if "api/chatbot/help" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{status} POST "), lines
