"""The `code` of a `code_interpreter` call, read from the LLM's argument fragments as they arrive.

Providers split the arguments text anywhere: inside a key, inside an escape (`\\u00`, `e9`), between the two
halves of a surrogate pair. The reader follows the JSON object's structure just far enough to find its first
top-level `code` string and hands out that string's decoded characters as soon as they are certain; every
other key is skipped. Whether the whole text is valid JSON is checked once, at the end, by the caller.
"""

from __future__ import annotations

import re

_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_PLAIN = re.compile(r'[^"\\]+')  # a run of string characters that need no decoding
_HEX = frozenset("0123456789abcdefABCDEF")
_SURROGATE = re.compile("[\ud800-\udfff]")

# Where the reader is in the object's text.
_START, _KEY, _COLON, _VALUE, _OTHER, _CODE, _DONE, _INVALID = range(8)


class CodeArguments:
    """Feed the argument fragments in order; `feed` returns the code characters that became known."""

    def __init__(self) -> None:
        self._state = _START
        self._depth = 0  # nesting depth inside a skipped value
        self._in_string = False  # inside a string of a skipped value, or of a key
        self._escaped = False
        self._key: list[str] = []
        self._key_is_code = False
        self._hex: str | None = None  # the digits of a `\u` escape in the code, while incomplete
        self._high: str | None = None  # a high surrogate waiting for its low half
        self._code: list[str] = []
        self.complete = False  # the code string was closed

    @property
    def text(self) -> str:
        """The code read so far."""
        return "".join(self._code)

    @property
    def code(self) -> str | None:
        """The whole code once its string was closed; None before (or when there is none)."""
        return self.text if self.complete else None

    def feed(self, text: str) -> str:
        out: list[str] = []
        i, n = 0, len(text)
        while i < n and self._state not in (_DONE, _INVALID):
            if self._state == _CODE:
                i = self._read_code(text, i, out)
                continue
            ch = text[i]
            i += 1
            if self._state == _START:
                if ch == "{":
                    self._state = _KEY
                elif not ch.isspace():
                    self._state = _INVALID
            elif self._state == _KEY:
                self._read_key(ch)
            elif self._state == _COLON:
                if ch == ":":
                    self._state = _VALUE
                elif not ch.isspace():
                    self._state = _INVALID
            elif self._state == _VALUE:
                if ch.isspace():
                    continue
                if ch == '"' and self._key_is_code:
                    self._state = _CODE
                else:
                    # Any other value (a `code` that is no string counts as none) is skipped whole.
                    self._state = _OTHER
                    self._depth = 0
                    self._in_string = False
                    i -= 1
            else:  # _OTHER
                self._skip_value(ch)
        return "".join(out)

    def _read_key(self, ch: str) -> None:
        if self._in_string:
            if self._escaped:
                self._escaped = False
                self._key.append(ch)
            elif ch == "\\":
                self._escaped = True
                self._key.append(ch)
            elif ch == '"':
                self._in_string = False
                self._key_is_code = "".join(self._key) == "code"
                self._key.clear()
                self._state = _COLON
            else:
                self._key.append(ch)
        elif ch == '"':
            self._in_string = True
        elif ch == "}":
            self._state = _DONE
        elif not (ch.isspace() or ch == ","):
            self._state = _INVALID

    def _skip_value(self, ch: str) -> None:
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif ch == "\\":
                self._escaped = True
            elif ch == '"':
                self._in_string = False
        elif ch == '"':
            self._in_string = True
        elif ch in "{[":
            self._depth += 1
        elif ch in "}]" and self._depth:
            self._depth -= 1
        elif self._depth == 0 and ch in ",}":
            self._state = _KEY if ch == "," else _DONE

    def _read_code(self, text: str, i: int, out: list[str]) -> int:
        """Decode the code string from `text[i:]`; returns where it stopped."""
        if self._hex is not None:
            while i < len(text) and len(self._hex) < 4:
                if text[i] not in _HEX:
                    self._state = _INVALID
                    return len(text)
                self._hex += text[i]
                i += 1
            if len(self._hex) == 4:
                self._emit(chr(int(self._hex, 16)), out)
                self._hex = None
            return i
        if self._escaped:
            self._escaped = False
            if text[i] == "u":
                self._hex = ""
            elif text[i] in _ESCAPES:
                self._emit(_ESCAPES[text[i]], out)
            else:
                self._state = _INVALID
            return i + 1
        ch = text[i]
        if ch == "\\":
            self._escaped = True
            return i + 1
        if ch == '"':
            self._flush_high(out)
            self.complete = True
            self._state = _DONE
            return i + 1
        run = _PLAIN.match(text, i)
        assert run is not None
        self._emit(run.group(), out)
        return run.end()

    def _emit(self, chars: str, out: list[str]) -> None:
        # The halves of a surrogate pair may arrive apart (two escapes, or two deltas): a high half waits for
        # what follows, and a pair becomes one character.
        if self._high is not None:
            chars, self._high = self._high + chars, None
        if chars and "\ud800" <= chars[-1] <= "\udbff":
            chars, self._high = chars[:-1], chars[-1]
        if _SURROGATE.search(chars):
            chars = chars.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        if chars:
            self._append(chars, out)

    def _flush_high(self, out: list[str]) -> None:
        if self._high is not None:
            self._append(self._high, out)
            self._high = None

    def _append(self, chars: str, out: list[str]) -> None:
        self._code.append(chars)
        out.append(chars)
