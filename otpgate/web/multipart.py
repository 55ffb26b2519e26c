"""``multipart/form-data`` bodies (RFC 7578) of the portal's one upload form (pure).

Split by hand on the boundary rather than through an e-mail parser: an uploaded file must
come out byte for byte as the browser sent it (its ``Error_`` file must match the CLI's to
the byte), and only the few fields of the form are read (at most ``MAX_PARTS`` parts, each
header block at most ``MAX_HEADER_BYTES``).  Anything else is refused (None), never
guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message

MAX_PARTS = 10
MAX_HEADER_BYTES = 2048
_BOUNDARY = re.compile(r"""boundary=(?:"([^"]{1,70})"|([^\s;"]{1,70}))""", re.I)


@dataclass(frozen=True)
class Upload:
    filename: str
    """As the browser named it (only its last path component is ever used)."""
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class MultipartForm:
    fields: dict[str, str]
    files: dict[str, Upload]


def boundary_of(content_type: str) -> bytes | None:
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    found = _BOUNDARY.search(content_type)
    if found is None:
        return None
    return (found.group(1) or found.group(2)).encode("ascii", "replace")


def _disposition(header_block: bytes) -> tuple[str, str | None] | None:
    """The field name and file name of a part, from its Content-Disposition header."""
    try:
        text = header_block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    message = Message()
    for line in text.split("\r\n"):
        name, sep, value = line.partition(":")
        if not sep:
            return None
        message[name.strip()] = value.strip()
    if message.get_content_disposition() != "form-data":
        return None
    field_name = message.get_param("name", header="content-disposition")
    if not isinstance(field_name, str) or not field_name:
        return None
    filename = message.get_filename()
    return field_name, filename


def parse_multipart(body: bytes, content_type: str) -> MultipartForm | None:
    """The text fields and files of a ``multipart/form-data`` body; None if it is not one
    this form sends (no boundary, no closing delimiter, too many parts, a field that is not
    UTF-8, a field given twice)."""
    boundary = boundary_of(content_type)
    if boundary is None:
        return None
    pieces = (b"\r\n" + body).split(b"\r\n--" + boundary)
    if len(pieces) < 2 or len(pieces) - 1 > MAX_PARTS + 1:
        return None
    fields: dict[str, str] = {}
    files: dict[str, Upload] = {}
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            return MultipartForm(fields, files)  # the close delimiter: done
        line_end = piece.find(b"\r\n")
        if line_end < 0 or piece[:line_end].strip(b" \t"):
            return None
        rest = piece[line_end + 2 :]
        header_end = rest.find(b"\r\n\r\n")
        if header_end < 0 or header_end > MAX_HEADER_BYTES:
            return None
        described = _disposition(rest[:header_end])
        if described is None:
            return None
        name, filename = described
        content = rest[header_end + 4 :]
        if name in fields or name in files:
            return None
        if filename is not None:
            files[name] = Upload(filename, content)
            continue
        try:
            fields[name] = content.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None  # no close delimiter: cut off
