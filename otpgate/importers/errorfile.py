"""The ``Error_<file>`` written when an import has problem rows.

The original file is kept byte for byte; a marker goes before each problem row, so the
administrator fixes the rows in place and imports the file again (markers are comments
to the parsers: ``#`` lines in CSV, ``<!-- -->`` in XML).

Messages quote text from the file (an algorithm URI, a serial): inside a marker they are
reduced to a safe character set (:func:`safe_message`), so no message can end the comment
(``-->``), start a new line, or carry a terminal escape sequence.  In XML, KeyPackages are
found by the XML parser itself (start tags of the root's children, not text in comments,
CDATA or attribute values), so each marker lands before the package it is about.

The file holds every seed of the original: the CLI creates it with mode 0600, exclusively,
never through a symlink (``otpgate.admin.render.PrivateFile``), before the import changes
anything.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from xml.parsers import expat

from otpgate.importers import ImportResult, RowProblem

CSV_MARKER = "# ERROR"
XML_MARKER = "otpgate import ERROR"
_UNSAFE = re.compile(r"[^A-Za-z0-9 .,:;_()/=+'\"#@!?%*\[\]-]")
_DASHES = re.compile(r"-{2,}")


def error_file_name(path: PurePath) -> str:
    return f"Error_{path.name}"


def safe_message(text: str) -> str:
    """One line of harmless characters: anything outside ``A-Z a-z 0-9`` and
    ``space . , : ; _ ( ) / = + ' " # @ ! ? % * [ ] -`` becomes ``?``; runs of ``-`` become
    one (an XML comment may not contain ``--``)."""
    line = " ".join(text.split())
    return _DASHES.sub("-", _UNSAFE.sub("?", line)).strip()


def _messages(problems: tuple[RowProblem, ...]) -> dict[int, list[str]]:
    by_row: dict[int, list[str]] = {}
    for problem in problems:
        by_row.setdefault(problem.row, []).append(problem.message)
    return by_row


def error_file_text(original: str, result: ImportResult) -> str:
    by_row = _messages(result.problems)
    if result.kind == "xml":
        return _mark_xml(original, by_row)
    out: list[str] = []
    for number, line in enumerate(original.splitlines(keepends=True), start=1):
        for message in by_row.pop(number, []):
            out.append(f"{CSV_MARKER} line {number}: {safe_message(message)}\n")
        out.append(line)
    if by_row and out and not out[-1].endswith(("\n", "\r")):
        out.append("\n")
    for number, messages in sorted(by_row.items()):  # e.g. a problem with the file itself
        out.extend(f"{CSV_MARKER} line {number}: {safe_message(m)}\n" for m in messages)
    return "".join(out)


def key_package_offsets(data: bytes) -> list[int] | None:
    """Byte offsets of the ``<`` of each KeyPackage start tag that is a child of the root
    element (what the PSKC parser reads as package 1, 2, ...), found by expat; None if the
    text does not parse (or declares a DTD: nothing here expands entities)."""
    parser = expat.ParserCreate(encoding="UTF-8", namespace_separator="}")
    offsets: list[int] = []
    depth = 0

    def start(name: str, _attrs: object) -> None:
        nonlocal depth
        depth += 1
        if depth == 2 and name.rsplit("}", 1)[-1] == "KeyPackage":
            offsets.append(parser.CurrentByteIndex)

    def end(_name: str) -> None:
        nonlocal depth
        depth -= 1

    def refuse(*_args: object) -> None:
        raise ValueError("DTDs are not read")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except (expat.ExpatError, ValueError):
        return None
    return offsets


def _marker(number: int, message: str) -> bytes:
    return f"<!-- {XML_MARKER} (KeyPackage {number}): {safe_message(message)} -->".encode()


def _mark_xml(original: str, by_row: dict[int, list[str]]) -> str:
    data = original.encode("utf-8", "replace")
    offsets = key_package_offsets(data) or []
    out: list[bytes] = []
    pos = 0
    for number, offset in enumerate(offsets, start=1):
        messages = by_row.pop(number, [])
        if not messages:
            continue
        out.append(data[pos:offset])
        out.extend(_marker(number, message) for message in messages)
        pos = offset
    out.append(data[pos:])
    for number, messages in sorted(by_row.items()):  # not found: after the root element
        out.extend(b"\n" + _marker(number, message) + b"\n" for message in messages)
    return b"".join(out).decode("utf-8", "replace")
