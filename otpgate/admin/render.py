"""Things printed for people (pure apart from the private file writer): QR codes, the
scratch card, progress bars, and the 0600 files that hold secrets."""

from __future__ import annotations

import html
import io
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TextIO

import segno

from otpgate.errors import OtpgateError
from otpgate.otp.scratch import format_for_print

QR_SUFFIXES = (".png", ".svg")


def qr_code(uri: str) -> segno.QRCode:
    return segno.make(uri, error="m", micro=False)


def qr_terminal(uri: str) -> str:
    """The QR code as text for a terminal (compact: two modules per character)."""
    out = io.StringIO()
    qr_code(uri).terminal(out=out, compact=True)
    return out.getvalue()


def qr_bytes(uri: str, suffix: str) -> bytes:
    """The QR code as a PNG or SVG file's bytes (``suffix`` ".png" or ".svg")."""
    suffix = suffix.lower()
    if suffix not in QR_SUFFIXES:
        raise ValueError(f"give a .png or .svg file name, not {suffix or 'no suffix'}")
    buffer = io.BytesIO()
    qr_code(uri).save(buffer, kind=suffix[1:], scale=8, border=4)
    return buffer.getvalue()


def write_qr(uri: str, path: Path) -> None:
    """Save the QR code as PNG or SVG (chosen by the file name), readable only by the owner:
    it carries the secret."""
    if path.suffix.lower() not in QR_SUFFIXES:
        raise ValueError(f"--qr {path}: give a .png or .svg file name")
    write_private(path, qr_bytes(uri, path.suffix))


class PrivateFile:
    """A file for secrets (QR code, scratch card, ``Error_`` import file), created *before*
    the change whose result it will hold, so a bad path fails before anything changes.

    Created empty with O_CREAT | O_EXCL | O_NOFOLLOW and mode 0600: an existing file, or a
    symlink planted under the name, is refused (FileExistsError) and never written through.
    :meth:`write` fills and closes it; :meth:`discard` removes it while it is still empty
    (only if the name still refers to the file created here).
    """

    def __init__(self, path: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self.path = path
        self._fd: int | None = os.open(path, flags, 0o600)
        os.fchmod(self._fd, 0o600)

    def _take(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path} is already closed")
        fd, self._fd = self._fd, None
        return fd

    def write(self, data: bytes) -> None:
        """Fill the file and close it; on a failure remove it (no half-written secret)."""
        fd = self._take()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            self._remove(fd)
            raise
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Remove the file (not written: the change it was for did not happen)."""
        if self._fd is None:
            return
        fd = self._take()
        try:
            self._remove(fd)
        finally:
            os.close(fd)

    def _remove(self, fd: int) -> None:
        mine = os.fstat(fd)
        try:
            there = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
            os.unlink(self.path)


class PrivateFileRefused(OtpgateError):
    """A file for secrets cannot be created: one line saying why and what it means."""


def create_private(path: Path, what: str, consequence: str) -> PrivateFile:
    """A :class:`PrivateFile` for ``what`` (e.g. "--qr"), or :class:`PrivateFileRefused`
    naming the file and ``consequence`` (e.g. "nothing was changed")."""
    try:
        return PrivateFile(path)
    except FileExistsError as exc:
        raise PrivateFileRefused(
            f"{what} {path} exists (or is a symlink) and is not overwritten: remove or rename "
            f"it and run the command again; {consequence}"
        ) from exc
    except OSError as exc:
        raise PrivateFileRefused(
            f"cannot create {what} {path}: {exc.strerror}; {consequence}"
        ) from exc


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (refusing to overwrite: it may be someone's secret)."""
    PrivateFile(path).write(data)


def scratch_card_html(
    user: str, issuer: str, codes: Sequence[str], created: float | None = None
) -> str:
    """A print-ready HTML card (one A6-ish box, codes in two columns, tick boxes)."""
    stamp = time.strftime("%Y-%m-%d", time.gmtime(time.time() if created is None else created))
    lines = format_for_print(list(codes))
    cells = "\n".join(
        f'      <li><span class="box"></span><code>{html.escape(line)}</code></li>'
        for line in lines
    )
    esc_user, esc_issuer = html.escape(user), html.escape(issuer)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Backup codes for {esc_user}</title>
<style>
  @page {{ size: A4; margin: 20mm; }}
  body {{ font-family: sans-serif; color: #000; background: #fff; }}
  .card {{ width: 120mm; border: 1px dashed #000; padding: 6mm 8mm; }}
  h1 {{ font-size: 13pt; margin: 0 0 2mm 0; }}
  p {{ font-size: 9pt; margin: 1mm 0; }}
  ol {{ columns: 2; font-size: 13pt; padding-left: 8mm; margin: 4mm 0; }}
  li {{ margin: 1.5mm 0; }}
  code {{ font-family: "DejaVu Sans Mono", monospace; letter-spacing: 0.5pt; }}
  .box {{ display: inline-block; width: 3mm; height: 3mm; border: 1px solid #000;
          margin-right: 2mm; vertical-align: middle; }}
  @media print {{ .noprint {{ display: none; }} }}
</style>
</head>
<body>
  <div class="card">
    <h1>{esc_issuer}: backup codes</h1>
    <p>For <strong>{esc_user}</strong>, issued {stamp}.</p>
    <p>Each code works once, instead of the code from your authenticator.
       Tick it off when used. Keep this card private; a new list replaces it.</p>
    <ol>
{cells}
    </ol>
  </div>
  <p class="noprint">Print this page, then delete the file.</p>
</body>
</html>
"""


class Ticker(Protocol):
    """What a long admin loop reports its progress to (:class:`Progress`, or anything)."""

    def advance(self, n: int = 1) -> None: ...

    def finish(self) -> None: ...


class Progress:
    """A one-line progress bar on a terminal; silent when ``out`` is not a TTY."""

    def __init__(self, total: int, what: str, out: TextIO, enabled: bool | None = None) -> None:
        self.total = max(total, 0)
        self.what = what
        self.out = out
        self.enabled = out.isatty() if enabled is None else enabled
        self.done = 0
        self._last = -1.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and self.done < self.total:
            return
        self._last = now
        self.out.write("\r" + self.line())
        self.out.flush()

    def line(self, width: int = 30) -> str:
        if self.total:
            filled = min(width, width * self.done // self.total)
            bar = "#" * filled + "-" * (width - filled)
            return f"{self.what} [{bar}] {self.done}/{self.total}"
        return f"{self.what}: {self.done}"

    def finish(self) -> None:
        if self.enabled:
            self.out.write("\r" + self.line() + "\n")
            self.out.flush()
