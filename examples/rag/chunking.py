"""Split text and Markdown files into overlapping chunks with stable ids.

Markdown is cut at headings first (a chunk never spans two sections, and it remembers the
trail of headings above it), then at paragraphs (blank lines; a fenced code block or a table
stays one paragraph), then packed up to a size limit. Paragraphs longer than the limit are cut
at lines, then sentences, then words. Each chunk after the first of a section starts with the
last `overlap` units of the previous one, cut at a word boundary. Sizes are characters by
default or any other measure (`length`), for example a tokenizer's token count.

A chunk's id is `file#index`: the same files give the same ids on every run.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

Length = Callable[[str], int]
Span = tuple[int, int]  # [start, end) in a section's text

SUFFIXES = (".md", ".markdown", ".txt")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_SEPARATORS = ("\n", ". ", " ")  # where to cut a paragraph over the limit, in this order
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")


@dataclass(frozen=True)
class Chunk:
    file: str  # as the caller names it (e.g. relative to the folder ingested)
    index: int  # position in the file, from 0
    heading: str  # trail of Markdown headings, "Top > Section > Sub"; "" for plain text
    text: str

    @property
    def id(self) -> str:
        return f"{self.file}#{self.index}"

    @property
    def context(self) -> str:
        """What gets embedded and shown to the model: the heading trail, then the text."""
        return f"{self.heading}\n\n{self.text}" if self.heading else self.text


@dataclass(frozen=True)
class ChunkSettings:
    # at most this many units (characters unless `length` says otherwise); 600 characters of
    # these docs stay under all-MiniLM-L6-v2's 256-token window (Markdown tables and code
    # come to about 2.5 characters a token)
    size: int = 600
    overlap: int = 100  # units repeated from the end of the previous chunk of the section
    length: Length = len

    def __post_init__(self) -> None:
        if self.size < 8 or not 0 <= self.overlap <= self.size // 2:
            raise ValueError("chunk size must be at least 8 and overlap at most half of it")


def sections(text: str, markdown: bool = True) -> Iterator[tuple[str, str]]:
    """(heading trail, body) for each section; headings inside code fences do not count."""
    trail: list[tuple[int, str]] = []
    body: list[str] = []
    fence = ""
    for line in text.splitlines():
        opened = _FENCE.match(line)
        if opened and (not fence or opened.group(1)[0] == fence[0]):
            fence = "" if fence else opened.group(1)
        heading = _HEADING.match(line) if markdown and not fence else None
        if heading is None:
            body.append(line)
            continue
        yield " > ".join(title for _, title in trail), "\n".join(body)
        body = []
        level = len(heading.group(1))
        trail = [(lvl, title) for lvl, title in trail if lvl < level] + [(level, heading[2])]
    yield " > ".join(title for _, title in trail), "\n".join(body)


def paragraphs(body: str) -> list[Span]:
    """Spans of blank-line separated blocks; a fenced code block stays one block."""
    spans: list[Span] = []
    start = None
    fence = ""
    offset = 0
    for line in body.splitlines(keepends=True):
        opened = _FENCE.match(line)
        if opened and (not fence or opened.group(1)[0] == fence[0]):
            fence = "" if fence else opened.group(1)
        if line.strip() or fence:
            start = offset if start is None else start
        elif start is not None:
            spans.append(_trim(body, start, offset))
            start = None
        offset += len(line)
    if start is not None:
        spans.append(_trim(body, start, offset))
    return [span for span in spans if span[0] < span[1]]


def split_long(text: str, span: Span, limit: int, length: Length = len) -> list[Span]:
    """Sub-spans of `span`, each at most `limit` long, cut at the coarsest separator that works."""
    start, end = span
    if length(text[start:end]) <= limit:
        return [span]
    for separator in _SEPARATORS:
        cuts = [m.end() for m in re.finditer(re.escape(separator), text[start:end])]
        if not cuts:
            continue
        bounds = [start, *(start + cut for cut in cuts), end]
        pieces = [_trim(text, a, b) for a, b in itertools.pairwise(bounds)]
        out: list[Span] = []
        for packed in _pack(text, [p for p in pieces if p[0] < p[1]], limit, length):
            out.extend(split_long(text, packed, limit, length))
        return out
    cut = start + _longest_prefix(text[start:end], limit, length)  # a word over the limit
    return [(start, cut), *split_long(text, (cut, end), limit, length)]


def chunk_text(file: str, text: str, settings: ChunkSettings | None = None) -> list[Chunk]:
    """The chunks of one file's text (Markdown unless `file` ends in .txt)."""
    settings = settings or ChunkSettings()
    markdown = not file.endswith(".txt")
    # a packed span leaves room for the overlap in front of it and a blank line between them
    room = max(1, settings.size - settings.overlap - settings.length("\n\n"))
    chunks: list[Chunk] = []
    for heading, raw in sections(text, markdown):
        body = _BLANK_LINES.sub("\n\n", raw)
        spans = [
            piece
            for paragraph in paragraphs(body)
            for piece in split_long(body, paragraph, room, settings.length)
        ]
        floor = 0  # the overlap never reaches back before the previous chunk's start
        for start, end in _pack(body, spans, room, settings.length):
            begin = _overlap_start(body, floor, start, settings.overlap, settings.length)
            chunks.append(Chunk(file, len(chunks), heading, body[begin:end].strip()))
            floor = start
    return chunks


def chunk_file(path: Path, name: str, settings: ChunkSettings | None = None) -> list[Chunk]:
    return chunk_text(name, path.read_text(encoding="utf-8", errors="replace"), settings)


def find_files(paths: list[Path]) -> list[Path]:
    """Text and Markdown files under `paths` (files or folders), sorted; hidden ones skipped."""
    found: set[Path] = set()
    for path in paths:
        if path.is_file():
            found.add(path)
        elif path.is_dir():
            for candidate in path.rglob("*"):
                hidden = any(part.startswith(".") for part in candidate.relative_to(path).parts)
                if candidate.is_file() and candidate.suffix.lower() in SUFFIXES and not hidden:
                    found.add(candidate)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return sorted(found)


def _pack(text: str, spans: list[Span], limit: int, length: Length) -> list[Span]:
    """Greedy: merge consecutive spans while the text they cover stays within `limit`."""
    packed: list[Span] = []
    for span in spans:
        if packed and length(text[packed[-1][0] : span[1]]) <= limit:
            packed[-1] = (packed[-1][0], span[1])
        else:
            packed.append(span)
    return packed


def _overlap_start(text: str, floor: int, start: int, size: int, length: Length) -> int:
    """Where a chunk that covers from `start` begins: up to `size` earlier, at a word start."""
    if size == 0 or start == floor:
        return start
    low, high = floor, start  # the smallest begin whose text up to `start` fits in `size`
    while low < high:
        middle = (low + high) // 2
        if length(text[middle:start].strip()) <= size:
            high = middle
        else:
            low = middle + 1
    if low > floor and not text[low - 1].isspace():
        boundary = re.search(r"\s", text[low:start])
        return start if boundary is None else low + boundary.end()
    return low


def _longest_prefix(text: str, limit: int, length: Length) -> int:
    """The largest n with length(text[:n]) <= limit (at least 1: always progress)."""
    low, high = 1, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if length(text[:middle]) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def _trim(text: str, start: int, end: int) -> Span:
    """The span without the whitespace at either end."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
