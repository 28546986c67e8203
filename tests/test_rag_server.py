"""The retrieval MCP server (tool_servers/rag): chunking, the BM25 index and its cache, the tool's answers, and
the server itself in-process, over streamable HTTP (one child process for the session) and over stdio."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import mcp
import pytest
from mcp import StdioServerParameters

import freva_gpt_ext
from freva_gpt_ext.paths import data_folder
from freva_gpt_ext.rag_server import build_server, default_cache_dir, load_rag
from freva_gpt_ext.rag_server import main as rag_server_main
from tests.rag_process import RagServerProcess
from tests.server_process import REPO

rag = load_rag()
chunking = rag.chunking
ResourceIndex = rag.ResourceIndex
TOOL = "get_context_from_resources"

CORPUS = {
    "freva/databrowser.md": """# The databrowser

Freva's databrowser finds files by their facets.

## Finding ERA5

Search the reanalysis with `databrowser(project="reanalysis", experiment="era5")`.

```python
# a comment in code, not a heading
from freva_client import databrowser

files = list(databrowser(experiment="era5", time_frequency="1day"))
```

## Metadata search

`databrowser.metadata_search` lists the facet values that exist.
""",
    "freva/notes.txt": "Zarr streams serve remote files as zarr.\n\nThey need a login token.\n",
    "recipes/means.md": """# Global means

Weight each grid cell by the cosine of its latitude before averaging.

## Seasonal cycle

Group by month and average: the climatology of each calendar month.
""",
    "recipes/examples.jsonl": "\n".join(
        [
            json.dumps(
                {
                    "question": "How do I compute an area-weighted global mean?",
                    "answer": "Weight by the cosine of latitude.",
                    "code": "w = np.cos(np.deg2rad(ds.lat))\nds.tas.weighted(w).mean(('lat', 'lon'))",
                }
            ),
            "not json at all",
            json.dumps({"question": "How do I regrid to one degree?", "code": "ds.interp(lat=lats, lon=lons)"}),
        ]
    ),
}


def write_corpus(root: Path, files: dict[str, str] = CORPUS) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def resources(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "resources")


def ask(server, question: str, library: str):
    """One tool call through a fresh in-process client."""

    async def call():
        async with mcp.Client(server) as client:
            return await client.call_tool(TOOL, {"question": question, "resources_to_retrieve_from": library})

    return call()


def text_of(result) -> str:
    return "".join(part.text for part in result.content)


# --- chunking -------------------------------------------------------------------------------------------------


def test_markdown_splits_on_headings_and_keeps_the_trail():
    chunks = chunking.chunk_file("resources/freva/databrowser.md", ".md", CORPUS["freva/databrowser.md"])
    assert [c.heading for c in chunks] == [
        ("The databrowser",),
        ("The databrowser", "Finding ERA5"),
        ("The databrowser", "Metadata search"),
    ]
    assert {c.source for c in chunks} == {"resources/freva/databrowser.md"}
    # A `#` inside a code fence is code: the block stays whole, in its section.
    assert "# a comment in code, not a heading\nfrom freva_client import databrowser\n\nfiles" in chunks[1].text
    assert chunks[1].text.endswith("```")


def test_a_longer_fence_holds_a_shorter_one():
    text = "# A\n\n````markdown\n```python\n# not a heading\n```\n\nstill code\n````\n\n## B\n\nafter\n"
    chunks = chunking.chunk_file("r/lib/nested.md", ".md", text)
    assert [c.heading for c in chunks] == [("A",), ("A", "B")]
    assert chunks[0].text == "````markdown\n```python\n# not a heading\n```\n\nstill code\n````"


def test_a_long_section_is_split_at_paragraphs():
    paragraphs = [f"Paragraph {n} " + "word " * 100 for n in range(6)]
    text = "# Title\n\n## Long\n\n" + "\n\n".join(p.strip() for p in paragraphs)
    chunks = chunking.chunk_file("r/lib/long.md", ".md", text)
    assert len(chunks) > 1
    assert all(len(c.text) <= chunking.MAX_CHUNK_CHARS for c in chunks)
    assert all(c.heading == ("Title", "Long") for c in chunks)
    # Every chunk is whole paragraphs, in order, none lost.
    rejoined = [p for c in chunks for p in c.text.split("\n\n")]
    assert rejoined == [p.strip() for p in paragraphs]


def test_text_files_split_on_paragraphs_and_jsonl_lines_are_worked_examples():
    text = chunking.chunk_file("resources/freva/notes.txt", ".txt", CORPUS["freva/notes.txt"])
    assert [(c.heading, c.kind) for c in text] == [((), "text")]
    assert "Zarr streams" in text[0].text and "login token" in text[0].text

    examples = chunking.chunk_file("resources/recipes/examples.jsonl", ".jsonl", CORPUS["recipes/examples.jsonl"])
    assert [c.kind for c in examples] == ["example", "example"]  # the line that is not JSON is skipped
    first = examples[0]
    assert first.heading == ("Worked example", "How do I compute an area-weighted global mean?")
    assert "Answer: Weight by the cosine of latitude." in first.text
    assert "```python\nw = np.cos(np.deg2rad(ds.lat))" in first.text


def test_tokens_meet_across_identifiers_and_word_forms():
    tokenize = rag.index.tokenize
    assert {"time", "frequency"} <= set(tokenize("time_frequency"))
    assert tokenize("regridding") == tokenize("regrid") == tokenize("regridded")
    assert tokenize("anomalies") == tokenize("anomaly")
    assert tokenize("How do I find it?") == ["find"]


# --- the index ------------------------------------------------------------------------------------------------


def test_libraries_are_the_folders(resources, tmp_path):
    index = ResourceIndex([resources], tmp_path / "cache")
    index.refresh()
    assert index.libraries == ["freva", "recipes"]
    sources = {hit.chunk.source for hit in index.search("databrowser zarr cosine latitude", None, 10)}
    assert sources == {
        "resources/freva/databrowser.md",
        "resources/freva/notes.txt",
        "resources/recipes/means.md",
        "resources/recipes/examples.jsonl",
    }


def test_zero_score_hits_are_dropped(resources, tmp_path):
    index = ResourceIndex([resources], tmp_path / "cache")
    index.refresh()
    # BM25 returns `limit` documents whatever the match; only the one chunk that shares a word may come back.
    hits = index.search("zarr", None, 6)
    assert [h.chunk.source for h in hits] == ["resources/freva/notes.txt"]
    assert all(h.score > 0 for h in hits)
    assert index.search("quasar nebula", None, 6) == []
    # Masking another library's chunks scores them 0: they must not fill the answer.
    assert index.search("zarr", "recipes", 6) == []


def test_only_a_changed_file_is_rechunked_and_the_cache_survives_a_restart(resources, tmp_path):
    cache = tmp_path / "cache"
    index = ResourceIndex([resources], cache)
    first = index.refresh()
    assert first.rechunked == sorted(f"resources/{name}" for name in CORPUS)
    assert index.refresh().changed is False

    notes = resources / "freva" / "notes.txt"
    notes.write_text("Zarr streams now need a kerchunk reference.\n", encoding="utf-8")
    report = index.refresh()
    assert report.rechunked == ["resources/freva/notes.txt"] and report.removed == []
    assert [h.chunk.source for h in index.search("kerchunk", None, 6)] == ["resources/freva/notes.txt"]
    assert index.search("login token", None, 6) == []

    # A new mtime with the same bytes: hashed, not re-chunked.
    os.utime(notes, ns=(notes.stat().st_atime_ns, notes.stat().st_mtime_ns + 5_000_000_000))
    assert index.refresh().rechunked == []

    (resources / "recipes" / "means.md").unlink()
    assert index.refresh().removed == ["resources/recipes/means.md"]

    # A second index over the same cache (a restart) re-chunks nothing and answers at once.
    again = ResourceIndex([resources], cache)
    assert [h.chunk.source for h in again.search("kerchunk", None, 6)] == ["resources/freva/notes.txt"]
    assert again.refresh().rechunked == []
    assert len(list(again.folder.glob("bm25-*"))) == 1  # indexes of earlier states are cleaned up


def test_a_cache_tokenized_differently_is_rebuilt(resources, tmp_path):
    index = ResourceIndex([resources], tmp_path / "cache")
    index.refresh()
    state = json.loads(index.state_path.read_text())
    state["settings"]["tokenizer"] = {**state["settings"]["tokenizer"], "stemmer": "another"}
    index.state_path.write_text(json.dumps(state))
    again = ResourceIndex([resources], tmp_path / "cache")
    assert again.search("zarr", None, 6) == []  # nothing loaded from a cache it cannot query
    assert len(again.refresh().rechunked) == len(CORPUS)
    assert again.search("zarr", None, 6)


def test_a_corpus_without_a_single_word_indexes_and_finds_nothing(tmp_path):
    resources = write_corpus(tmp_path / "resources", {"symbols/only.md": "# !\n\n--- ... ---\n"})
    index = ResourceIndex([resources], tmp_path / "cache")
    assert index.refresh().rechunked == ["resources/symbols/only.md"]
    assert index.libraries == ["symbols"] and index.search("anything", None, 6) == []
    assert ResourceIndex([resources], tmp_path / "cache").refresh().rechunked == []


def test_an_unwritable_cache_leaves_the_index_in_memory(resources, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    index = ResourceIndex([resources], blocker)
    index.refresh()
    assert index.search("zarr", None, 6)


# --- the tool -------------------------------------------------------------------------------------------------


async def test_in_process_server_lists_the_libraries_and_answers_with_sources(resources, tmp_path):
    server = build_server([resources], tmp_path / "cache", shipped=False)
    async with mcp.Client(server) as client:
        (tool,) = (await client.list_tools()).tools
        assert tool.name == TOOL
        assert "'freva', 'recipes'" in tool.description and "'all'" in tool.description
        assert set(tool.input_schema["properties"]) == {"question", "resources_to_retrieve_from"}
        assert tool.input_schema["required"] == ["question", "resources_to_retrieve_from"]

        result = await client.call_tool(
            TOOL, {"question": "How do I find ERA5 with the databrowser?", "resources_to_retrieve_from": "freva"}
        )
    assert not result.is_error and result.structured_content is None
    text = text_of(result)
    assert "\n\n[1] resources/freva/databrowser.md — The databrowser > Finding ERA5\nSearch the reanalysis" in text
    assert "recipes" not in text


async def test_library_choice_and_all(resources, tmp_path):
    server = build_server([resources], tmp_path / "cache", shipped=False)
    question = "weighted global mean with a databrowser search"
    only_recipes = text_of(await ask(server, question, "recipes"))
    assert "resources/recipes/" in only_recipes and "resources/freva/" not in only_recipes
    both = text_of(await ask(server, question, "ALL"))
    assert "resources/recipes/" in both and "resources/freva/" in both
    # Worked examples come back as such, code and all.
    assert "Worked example, resources/recipes/examples.jsonl\nQuestion: How do I compute an area-weighted" in both


async def test_unknown_library_empty_question_and_nothing_found(resources, tmp_path):
    server = build_server([resources], tmp_path / "cache", shipped=False)
    unknown = await ask(server, "era5", "cmip7")
    assert unknown.is_error
    assert "Unknown library 'cmip7'. Libraries: 'freva', 'recipes'; or 'all'" in text_of(unknown)

    empty = await ask(server, "  ", "all")
    assert empty.is_error and "question is empty" in text_of(empty)

    nothing = await ask(server, "quasar nebula", "freva")
    assert not nothing.is_error
    assert text_of(nothing).startswith("Nothing found in the library 'freva' for: quasar nebula")


async def test_the_answer_is_bounded(tmp_path):
    rag_server = rag.server
    files = {f"big/part{n}.md": f"# Part {n}\n\n" + "\n\n".join(["glacier " * 140] * 3) for n in range(12)}
    server = build_server([write_corpus(tmp_path / "resources", files)], tmp_path / "cache", shipped=False)
    text = text_of(await ask(server, "glacier", "big"))
    assert len(text) <= rag_server.MAX_ANSWER_CHARS
    passages = [line for line in text.splitlines() if line.startswith("[")]
    assert 1 < len(passages) <= rag_server.MAX_PASSAGES


async def test_a_changed_corpus_is_seen_by_the_next_call(resources, tmp_path):
    server = build_server([resources], tmp_path / "cache", shipped=False)
    assert "Nothing found" in text_of(await ask(server, "kerchunk", "all"))
    write_corpus(resources, {"xarray/kerchunk.md": "# Kerchunk\n\nReference files read remote NetCDF as zarr.\n"})
    assert "resources/xarray/kerchunk.md — Kerchunk" in text_of(await ask(server, "kerchunk", "xarray"))
    async with mcp.Client(server) as client:
        (tool,) = (await client.list_tools()).tools
    assert "'freva', 'recipes', 'xarray'" in tool.description


def test_the_command_line_refuses_a_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        rag_server_main(["--resources", str(tmp_path / "missing"), "--cache-dir", str(tmp_path)])
    assert exited.value.code == 2
    assert "missing: no such folder" in capsys.readouterr().err


async def test_a_server_started_without_libraries_lists_them_once_they_come(tmp_path):
    resources = tmp_path / "resources"
    resources.mkdir()
    server = build_server([resources], tmp_path / "cache", shipped=False)
    async with mcp.Client(server) as client:
        (tool,) = (await client.list_tools()).tools
        assert "Libraries: none yet" in tool.description
        write_corpus(resources)
        found = await client.call_tool(TOOL, {"question": "zarr", "resources_to_retrieve_from": "freva"})
        (tool,) = (await client.list_tools()).tools
    assert "[1] resources/freva/notes.txt" in text_of(found)
    assert "Libraries: 'freva', 'recipes';" in tool.description


def test_the_default_cache_lives_outside_the_package():
    package = Path(freva_gpt_ext.__file__).resolve().parent
    assert package not in default_cache_dir().resolve().parents


# --- the shipped corpus ---------------------------------------------------------------------------------------

# Questions a user asks, the library the model would pick, and the file that must come first.
QUESTIONS = [
    ("How do I find ERA5 data with freva?", "all", "freva/era5.md"),
    ("How do I open the files I found in xarray?", "freva", "freva/opening-data.md"),
    ("How do I get a zarr stream of a file?", "all", "freva/zarr-streams.md"),
    ("Error: No databrowser host configured", "freva", "freva/troubleshooting.md"),
    ("How do I run a freva plugin?", "all", "freva/plugins.md"),
    ("How do I log in to get a token?", "freva", "freva/authentication.md"),
    ("search files from the command line with freva-client", "all", "freva/command-line.md"),
    ("How do I compute an area-weighted global mean?", "climate-recipes", "climate-recipes/area-weighted-means.md"),
    ("linear trend per decade with significance", "all", "climate-recipes/trends.md"),
    ("mean seasonal cycle", "climate-recipes", "climate-recipes/seasonal-cycle.md"),
]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The server over its default folders: the shipped resources/."""
    return build_server((), tmp_path_factory.mktemp("rag-shipped"))


async def test_the_shipped_libraries_are_listed(shipped):
    libraries = sorted(p.name for p in data_folder("resources").iterdir() if p.is_dir())
    async with mcp.Client(shipped) as client:
        (tool,) = (await client.list_tools()).tools
    assert {"freva", "climate-recipes"} <= set(libraries)
    assert f"Libraries: {', '.join(repr(name) for name in libraries)};" in tool.description


@pytest.mark.parametrize(("question", "library", "expected"), QUESTIONS)
async def test_the_shipped_corpus_answers_with_the_expected_file_first(shipped, question, library, expected):
    text = text_of(await ask(shipped, question, library))
    first = next(line for line in text.splitlines() if line.startswith("[1] "))
    assert first.startswith(f"[1] resources/{expected}"), text[:600]


async def test_the_shipped_worked_examples_come_back_as_examples(shipped):
    question = "How do I compute the global mean near-surface temperature time series in degrees Celsius?"
    text = text_of(await ask(shipped, question, "climate-recipes"))
    assert f"[1] Worked example, resources/climate-recipes/examples.jsonl\nQuestion: {question}" in text
    assert "```python\n" in text


# --- the server as a process ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def http_server(tmp_path_factory) -> Iterator[RagServerProcess]:
    """One `freva-gpt-rag-server` over streamable HTTP for the session."""
    base = tmp_path_factory.mktemp("rag-http")
    with RagServerProcess([write_corpus(base / "resources")], base / "cache", base / "server.log") as server:
        yield server


async def test_over_streamable_http(http_server):
    async with mcp.Client(http_server.url) as client:
        (tool,) = (await client.list_tools()).tools
        assert "'freva', 'recipes'" in tool.description
        found = await client.call_tool(TOOL, {"question": "zarr login token", "resources_to_retrieve_from": "all"})
        unknown = await client.call_tool(TOOL, {"question": "zarr", "resources_to_retrieve_from": "nope"})
    assert not found.is_error and "[1] resources/freva/notes.txt\nZarr streams" in text_of(found)
    assert unknown.is_error and "Unknown library 'nope'" in text_of(unknown)


async def test_over_stdio(tmp_path):
    folders = ["--no-shipped", "--resources", str(write_corpus(tmp_path / "resources"))]
    folders += ["--cache-dir", str(tmp_path / "cache")]
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "freva_gpt_ext.rag_server", "--stdio", "--log-level", "WARNING", *folders],
        cwd=REPO,
    )
    async with mcp.Client(params) as client:
        (tool,) = (await client.list_tools()).tools
        assert "'freva', 'recipes'" in tool.description
        result = await client.call_tool(TOOL, {"question": "seasonal cycle", "resources_to_retrieve_from": "recipes"})
    assert "[1] resources/recipes/means.md — Global means > Seasonal cycle" in text_of(result)
