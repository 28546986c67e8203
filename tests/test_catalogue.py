"""A broken or missing model catalogue keeps the API up and says, where a client looks, what to fix."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError

from freva_gpt_ext import __version__
from freva_gpt_ext.core.catalogue import NO_MODEL_HINT
from freva_gpt_ext.core.llm import ModelCatalogue
from tests.conftest import body_json
from tests.fake_llm import FakeLLM, catalogue_yaml

# (catalogue text, what its detail must say besides the file). None: the file does not exist.
BROKEN = {
    "invalid-yaml": (
        "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/x\n     api_base: http://h\n",
        ["line 5, column 6", "invalid YAML", "fix the syntax"],
    ),
    "missing-file": (None, ["does not exist", "FREVAGPT_LITELLM_CONFIG"]),
    "entry-without-model": (
        "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x}\n"
        "  - model_name: b\n    litellm_params: {api_base: http://h}\n",
        ["line 4, column 5", "entry 2", "'b'", "litellm_params.model", "add"],
    ),
    "duplicate-names": (
        "model_list:\n  - model_name: a\n    litellm_params: {model: openai/x}\n"
        "  - model_name: a\n    litellm_params: {model: openai/y}\n",
        ["line 4, column 5", "entry 2", "entry 1 (line 2, column 5)", "'a'", "unique"],
    ),
}


@pytest.fixture(params=list(BROKEN))
def broken(request) -> str:
    return request.param


@pytest.fixture
def catalogue(tmp_path: Path, broken: str) -> Path:
    path = tmp_path / f"{broken}.yaml"
    text = BROKEN[broken][0]
    if text is not None:
        path.write_text(text)
    return path


def detail_header(response) -> str:
    value = response.headers["X-FrevaGPT-Detail"]
    assert value.isascii() and "\n" not in value and "\r" not in value and len(value) <= 200, value
    return value


async def test_broken_catalogue_keeps_the_api(api, jp_fetch, catalogue, broken, caplog):
    caplog.set_level(logging.INFO)
    ping = await jp_fetch("api", "chatbot", "ping")
    body = body_json(ping)
    assert set(body) == {"status", "version", "detail"}, body
    assert (body["status"], body["version"]) == ("degraded", __version__)
    detail = body["detail"]
    for part in [str(catalogue), *BROKEN[broken][1]]:
        assert part in detail, (part, detail)

    models = await api("availablechatbots")
    assert models.code == 200
    assert body_json(models) == []
    header = detail_header(models)
    assert header.startswith(" ".join(detail.split())[:100]), (header, detail)

    with pytest.raises(HTTPClientError) as info:
        await api("streamresponse", method="POST", input="hello")
    assert info.value.code == 503
    assert body_json(info.value.response) == {"detail": detail}

    # The rest of the API works: threads can still be read.
    assert body_json(await api("getuserthreads")) == [[], 0]
    assert detail in caplog.text, "the whole text is in the log"
    assert "AttributeError" not in caplog.text


class TestWithoutBrokenFile:
    @pytest.fixture
    def catalogue(self, tmp_path: Path, fake_llm: FakeLLM) -> Path:
        path = tmp_path / "models.yaml"
        path.write_text(catalogue_yaml(fake_llm.base_url))
        return path

    @pytest.mark.parametrize("freva_config", [{"topic_model": "no-such-model"}])
    async def test_unknown_topic_model_counts_as_broken(self, api, jp_fetch):
        body = body_json(await jp_fetch("api", "chatbot", "ping"))
        assert body["status"] == "degraded"
        assert "'no-such-model'" in body["detail"] and "topic_model" in body["detail"]
        assert "fake-text" in body["detail"], "it names the models to choose from"
        models = await api("availablechatbots")
        assert body_json(models) == []
        assert "no-such-model" in detail_header(models)

    @pytest.mark.parametrize("freva_config", [{"litellm_config": ""}])
    async def test_no_catalogue_says_how_to_add_a_model(self, api, jp_fetch):
        assert body_json(await jp_fetch("api", "chatbot", "ping")) == {"status": "ok", "version": __version__}
        models = await api("availablechatbots")
        assert (models.code, body_json(models)) == (200, [])
        assert detail_header(models) == NO_MODEL_HINT
        with pytest.raises(HTTPClientError) as info:
            await api("streamresponse", method="POST", input="hello")
        assert info.value.code == 503
        assert body_json(info.value.response) == {"detail": NO_MODEL_HINT}

    async def test_a_working_catalogue_sends_no_detail(self, api):
        models = await api("availablechatbots")
        assert "fake-text" in body_json(models)
        assert "X-FrevaGPT-Detail" not in models.headers


def test_the_example_catalogue_starts_with_a_model_that_needs_no_litellm() -> None:
    example = ModelCatalogue.load(Path(__file__).resolve().parent.parent / "examples" / "litellm_config.yaml")
    default = example.get(None)
    assert default is not None and default.streams_lean, default
    assert any(not m.streams_lean for m in example.chat), "it still shows a litellm model"
