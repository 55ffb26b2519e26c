"""The ``Error_<file>`` written when an import has problem rows (pure text in, text out).

The original file is kept byte for byte; a marker goes before each problem row, so the
administrator fixes the rows in place and imports the file again (markers are comments
to the parsers: ``#`` lines in CSV, ``<!-- -->`` in XML).
"""

from __future__ import annotations

import re
from pathlib import PurePath

from otpgate.importers import ImportResult, RowProblem

_KEY_PACKAGE = re.compile(r"<(?:[A-Za-z_][\w.-]*:)?KeyPackage[\s>/]")
CSV_MARKER = "# ERROR"
XML_MARKER = "otpgate import ERROR"


def error_file_name(path: PurePath) -> str:
    return f"Error_{path.name}"


def _messages(problems: tuple[RowProblem, ...]) -> dict[int, list[str]]:
    by_row: dict[int, list[str]] = {}
    for problem in problems:
        by_row.setdefault(problem.row, []).append(problem.message)
    return by_row


def _one_line(text: str) -> str:
    return " ".join(text.split())


def error_file_text(original: str, result: ImportResult) -> str:
    by_row = _messages(result.problems)
    if result.kind == "xml":
        return _mark_xml(original, by_row)
    out: list[str] = []
    for number, line in enumerate(original.splitlines(keepends=True), start=1):
        for message in by_row.pop(number, []):
            out.append(f"{CSV_MARKER} line {number}: {_one_line(message)}\n")
        out.append(line)
    for number, messages in sorted(by_row.items()):  # e.g. a problem with the file itself
        out.extend(f"{CSV_MARKER} line {number}: {_one_line(m)}\n" for m in messages)
    return "".join(out)


def _mark_xml(original: str, by_row: dict[int, list[str]]) -> str:
    out: list[str] = []
    pos = 0
    for number, match in enumerate(_KEY_PACKAGE.finditer(original), start=1):
        messages = by_row.pop(number, [])
        if not messages:
            continue
        out.append(original[pos : match.start()])
        for message in messages:
            safe = _one_line(message).replace("--", "- -")
            out.append(f"<!-- {XML_MARKER} (KeyPackage {number}): {safe} -->")
        pos = match.start()
    out.append(original[pos:])
    text = "".join(out)
    for number, messages in sorted(by_row.items()):
        for message in messages:
            safe = _one_line(message).replace("--", "- -")
            text += f"\n<!-- {XML_MARKER} (KeyPackage {number}): {safe} -->\n"
    return text
