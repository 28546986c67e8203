"""A BM25 index over documentation libraries (each sub-folder of a resource root is one library), kept in step with
the files: a refresh looks at every file's size and mtime, hashes only those that look changed, and re-chunks only
those whose hash changed. Chunks, per-file hashes and the BM25 arrays are saved in a cache folder, so a restart
re-chunks nothing that did not change."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import Any

import bm25s
import numpy as np
from bm25s.stopwords import STOPWORDS_EN_PLUS

from .chunking import CHUNKING_VERSION, SUFFIXES, Chunk, chunk_file

log = logging.getLogger(__name__)

# A saved index is only good for queries tokenized the same way: bm25s does not record it, and a mismatch scores
# every document 0 without an error. Saved beside the index; a cache written with other settings is rebuilt.
TOKENIZER = {"pattern": r"\w+", "identifier_parts": True, "stopwords": "bm25s-en-plus", "stemmer": "suffix-v1"}
# A file whose mtime lies this close to when it was hashed may change again within the same mtime tick, so its
# size and mtime are not trusted until it is older (the "racily clean" case git guards against too).
_RACY_NS = 2_000_000_000
# What a cache must have been written with to be used.
_SETTINGS = {"tokenizer": TOKENIZER, "chunking": CHUNKING_VERSION}
_WORD = re.compile(TOKENIZER["pattern"])
_STOPWORDS = frozenset(STOPWORDS_EN_PLUS)


def tokenize(text: str) -> list[str]:
    """Lower-cased words without English stop words (question words too), light suffixes stripped;
    `time_frequency` also gives `time` and `frequency`, so prose and identifiers meet."""
    tokens = []
    for word in _WORD.findall(text.lower()):
        parts = [word, *word.split("_")] if "_" in word else [word]
        tokens.extend(_stem(part) for part in parts if len(part) > 1 and part not in _STOPWORDS)
    return tokens


def _stem(word: str) -> str:
    """A deliberately small English suffix stripper (plurals, -ing, -ed): no stemming library is a dependency."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    for suffix in ("ing", "ed"):
        stem = word.removesuffix(suffix)
        if stem != word and len(stem) >= 4:
            return stem[:-1] if stem[-1] == stem[-2] and stem[-1] not in "lsz" else stem
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    library: str
    score: float


@dataclass(frozen=True)
class Refresh:
    """What one refresh did: the sources re-chunked (new or changed) and those gone."""

    rechunked: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.rechunked or self.removed)


@dataclass
class _File:
    library: str
    source: str
    mtime_ns: int
    size: int
    sha256: str
    hashed_ns: int
    chunks: list[Chunk]

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "chunks": [chunk.to_json() for chunk in self.chunks]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _File:
        return cls(**{**data, "chunks": [Chunk.from_json(chunk) for chunk in data["chunks"]]})


@dataclass(frozen=True)
class _Ranker:
    """An immutable snapshot searched without the lock: a refresh swaps in a new one."""

    bm25: bm25s.BM25 | None
    chunks: list[Chunk]
    libraries: np.ndarray


class ResourceIndex:
    """The libraries under `roots` (`<root>/<library>/**/*.md|.markdown|.txt|.jsonl`), cached under `cache_dir`.

    Thread-safe: `refresh` serialises on a lock; `search` reads the current snapshot."""

    def __init__(self, roots: Sequence[Path], cache_dir: Path) -> None:
        self.roots = [Path(root).resolve() for root in roots]
        key = hashlib.sha256("\n".join(map(str, self.roots)).encode()).hexdigest()[:16]
        self.folder = Path(cache_dir) / key
        self._lock = threading.Lock()
        self._files: dict[str, _File] = {}
        self._index_name = ""
        self._ranker = _Ranker(None, [], np.array([], dtype=object))
        for root in self.roots:
            if not root.is_dir():
                log.warning("Resource folder %s does not exist: it adds no library until it does", root)
        self._load()

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    @property
    def libraries(self) -> list[str]:
        """The libraries that hold at least one indexed file, sorted."""
        return sorted({entry.library for entry in self._files.values()})

    def __len__(self) -> int:
        """The number of chunks indexed."""
        return len(self._ranker.chunks)

    def refresh(self) -> Refresh:
        """Bring the index in step with the files; cheap when nothing changed (one stat per file)."""
        with self._lock:
            found = self._scan()
            rechunked: list[str] = []
            restamped = False
            files: dict[str, _File] = {}
            for path, (library, source, stat) in found.items():
                entry = self._files.get(path)
                now = time.time_ns()
                if (
                    entry is not None
                    and (entry.mtime_ns, entry.size) == (stat.st_mtime_ns, stat.st_size)
                    and entry.hashed_ns - entry.mtime_ns > _RACY_NS
                ):
                    files[path] = entry
                    continue
                try:
                    data = Path(path).read_bytes()
                except OSError as error:
                    log.warning("Cannot read %s: %s", path, error)
                    continue
                digest = hashlib.sha256(data).hexdigest()
                if entry is not None and entry.sha256 == digest:
                    chunks = entry.chunks
                else:
                    text = data.decode("utf-8", errors="replace")
                    chunks = chunk_file(source, Path(path).suffix.lower(), text)
                    rechunked.append(source)
                files[path] = _File(library, source, stat.st_mtime_ns, stat.st_size, digest, now, chunks)
                restamped = True
            removed = sorted(self._files[path].source for path in self._files.keys() - files.keys())
            self._files = files
            report = Refresh(sorted(rechunked), removed)
            if report.changed or self._ranker.bm25 is None:
                self._rebuild()
            if report.changed or restamped:
                self._save()
            if report.changed:
                log.info("Re-indexed %d file(s), %d gone: %s", len(rechunked), len(removed), rechunked + removed)
            return report

    def search(self, question: str, library: str | None, limit: int) -> list[Hit]:
        """The best chunks for `question` in `library` (None: all), best first; never a chunk scoring 0 — BM25
        returns `limit` results whatever the match, the ones with no common word scoring exactly 0."""
        ranker = self._ranker
        tokens = tokenize(question)
        if ranker.bm25 is None or not tokens:
            return []
        mask = None if library is None else (ranker.libraries == library).astype(np.float32)
        ids, scores = ranker.bm25.retrieve(
            [tokens], k=min(limit, len(ranker.chunks)), show_progress=False, weight_mask=mask
        )
        return [
            Hit(ranker.chunks[i], str(ranker.libraries[i]), float(score))
            for i, score in zip(ids[0], scores[0], strict=True)
            if score > 0
        ]

    def _scan(self) -> dict[str, tuple[str, str, os.stat_result]]:
        """Every indexable file: absolute path → (library, source label, stat). Hidden names are skipped."""
        found: dict[str, tuple[str, str, os.stat_result]] = {}
        for root in self.roots:
            if not root.is_dir():
                continue
            for folder in sorted(root.iterdir()):
                if not folder.is_dir() or folder.name.startswith((".", "_")):
                    continue
                for path in sorted(folder.rglob("*")):
                    relative = path.relative_to(root)
                    if path.suffix.lower() not in SUFFIXES or any(p.startswith(".") for p in relative.parts):
                        continue
                    try:
                        stat = path.stat()
                    except OSError:
                        continue
                    if S_ISREG(stat.st_mode):
                        found[str(path)] = (folder.name, f"{root.name}/{relative.as_posix()}", stat)
        return found

    def _ordered_chunks(self) -> tuple[list[Chunk], list[str]]:
        chunks: list[Chunk] = []
        libraries: list[str] = []
        for path in sorted(self._files):
            entry = self._files[path]
            chunks.extend(entry.chunks)
            libraries.extend([entry.library] * len(entry.chunks))
        return chunks, libraries

    def _rebuild(self) -> None:
        chunks, libraries = self._ordered_chunks()
        tokens = [tokenize(self._indexed_text(chunk, lib)) for chunk, lib in zip(chunks, libraries, strict=True)]
        bm25 = None
        if any(tokens):  # bm25s cannot index a corpus without a single word
            bm25 = bm25s.BM25()
            bm25.index(tokens, show_progress=False)
        self._ranker = _Ranker(bm25, chunks, np.array(libraries, dtype=object))
        self._index_name = f"bm25-{self._fingerprint()}" if bm25 is not None else ""

    @staticmethod
    def _indexed_text(chunk: Chunk, library: str) -> str:
        """What BM25 sees: the text with its library, file name and headings, which often name the topic best."""
        return " ".join((library, Path(chunk.source).stem, *chunk.heading, chunk.text))

    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in sorted(self._files):
            digest.update(f"{path}\0{self._files[path].sha256}\0".encode())
        return digest.hexdigest()[:16]

    def _save(self) -> None:
        """The BM25 arrays in a folder named by content, then the state file that names it, replaced atomically:
        another process sharing the cache reads either the old state or the new one, both complete."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            target = self.folder / self._index_name
            if self._ranker.bm25 is not None and not target.is_dir():
                partial = self.folder / f".{self._index_name}-{os.getpid()}-{threading.get_ident()}"
                self._ranker.bm25.save(str(partial))
                try:
                    partial.replace(target)
                except OSError:
                    # Another process sharing the cache saved the same index (the name is its content) first.
                    shutil.rmtree(partial, ignore_errors=True)
                    if not target.is_dir():
                        raise
            state = {
                "settings": _SETTINGS,
                "index": self._index_name,
                "files": {path: entry.to_json() for path, entry in self._files.items()},
            }
            partial_state = self.state_path.with_name(f".state-{os.getpid()}-{threading.get_ident()}.json")
            partial_state.write_text(json.dumps(state), encoding="utf-8")
            partial_state.replace(self.state_path)
            for stale in self.folder.glob("bm25-*"):
                if stale.name != self._index_name:
                    shutil.rmtree(stale, ignore_errors=True)
        except OSError as error:
            log.warning(
                "Cannot write the retrieval cache in %s (%s): the index lives in memory only", self.folder, error
            )

    def _load(self) -> None:
        """The saved state, when it was written with today's tokenizer and chunking; anything else is rebuilt."""
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if state.get("settings") != _SETTINGS:
            log.info("The retrieval cache in %s was built with other settings: rebuilding it", self.folder)
            return
        try:
            self._files = {path: _File.from_json(entry) for path, entry in state["files"].items()}
            self._index_name = state["index"]
            chunks, libraries = self._ordered_chunks()
            bm25 = bm25s.BM25.load(str(self.folder / self._index_name)) if self._index_name else None
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.info("The retrieval cache in %s is unreadable (%s): rebuilding it", self.folder, error)
            self._files = {}
            return
        if bm25 is not None and bm25.scores["num_docs"] != len(chunks):
            self._files = {}
            return
        self._ranker = _Ranker(bm25, chunks, np.array(libraries, dtype=object))
