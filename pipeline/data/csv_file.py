"""Reading a user's CSV file: its encoding and its oversized fields named by file and line.

Every CSV a user hands the pipeline (NIH's metadata and box list, a folder
source's labels, `cxr`'s --metadata and --labels) is read as UTF-8, a BOM
allowed. A file in another encoding (Latin-1, Windows-1252: "München" from
Excel) fails in one line that names the file, the line and the byte, and
how to convert it, instead of a codec's "position 355" with no file. A field
longer than the csv module's limit (131,072 characters: a broken quote that
swallows the rest of the file, or junk) sets that row aside with its line,
and the rows after it are read as usual.
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
from collections.abc import Iterator
from pathlib import Path


class DataEntryError(ValueError):
    """A CSV (metadata, labels) that cannot be read; the message names file, row and problem."""


def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def first_non_utf8(path: Path) -> tuple[int, int, int] | None:
    """(line, byte offset, byte value) of the first byte that is not UTF-8, read in chunks; None if all is."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with _open_bytes(path) as handle:
        while chunk := handle.read(1 << 20):
            held = decoder.getstate()[0]  # a character's first bytes, cut off at the last chunk's end
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                seen = held + chunk  # what exc.start counts in
                return (line + seen.count(b"\n", 0, exc.start), offset - len(held) + exc.start, seen[exc.start])
            line += chunk.count(b"\n")
            offset += len(chunk)
    return None


def encoding_message(path: Path) -> str:
    found = first_non_utf8(path)
    where = f"line {found[0]}: byte 0x{found[2]:02x} at offset {found[1]} is not UTF-8" if found else "not UTF-8"
    return (f"{path}: {where}: the file is in another encoding (Latin-1 or Windows-1252, as Excel writes): "
            f"save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > {path.stem}-utf8{path.suffix}")


@contextlib.contextmanager
def csv_file(path: Path | str) -> Iterator[csv.reader]:
    """A csv.reader over a UTF-8 (BOM allowed, .gz read through) CSV; a decoding
    failure while it is read becomes a DataEntryError naming file, line and byte."""
    path = Path(path)
    text = io.TextIOWrapper(_open_bytes(path), encoding="utf-8-sig", newline="")
    with text:
        try:
            yield csv.reader(text)
        except UnicodeDecodeError as exc:
            raise DataEntryError(encoding_message(path)) from exc


def csv_rows(reader: csv.reader) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(line, fields, None) per row, or (line, None, reason) for a row the csv
    module cannot read (a field over its limit); reading goes on after it."""
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, None, f"unreadable row: {exc} characters"
            continue
        yield reader.line_num, fields, None
