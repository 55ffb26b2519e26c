"""Importing hardware tokens into the inventory: the flow behind ``otpgate import``.

The file is already parsed (``otpgate.importers``).  Here: rows that clash with the
inventory become row problems; ``Error_<file>`` (every seed of the import file, so 0600,
exclusive, never through a symlink) is created *before* anything is imported; without
``partial`` a single problem row imports nothing; a failure half-way removes the rows
already added, so nothing is ever half-imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from otpgate.directory.inventory import InventoryItem, InventoryMapper
from otpgate.directory.ldapdata import SearchEntry
from otpgate.errors import CodecError, DirectoryError, OtpgateError, VaultError
from otpgate.importers import ImportResult, RowProblem, key_fingerprint, with_problems
from otpgate.importers.errorfile import error_file_name, error_file_text
from otpgate.tokens import Secret, Token

if TYPE_CHECKING:
    from otpgate.admin.render import PrivateFile, Ticker


class ImportRefused(OtpgateError):
    """Nothing was imported: problem rows without ``partial``, or no error file."""


class ImportInventory(Protocol):
    """The inventory operations an import needs (``SyncInventory`` in the CLI)."""

    @property
    def mapper(self) -> InventoryMapper: ...

    def entries(self) -> Sequence[SearchEntry]: ...

    def add(self, token: Token, secret: Secret, last: int = -1) -> InventoryItem: ...

    def delete(self, serial: str) -> None: ...


@dataclass(frozen=True)
class ImportOutcome:
    result: ImportResult
    """The file's rows with every problem: the parser's, clashes, rows the directory refused."""
    imported: list[str]
    """Serials added to the inventory (none in a dry run)."""
    error_path: Path
    """Where ``Error_<file>`` is (written only if ``result`` has problems)."""


def error_path_of(source: Path) -> Path:
    return source.with_name(error_file_name(source))


def inventory_clashes(inventory: ImportInventory, result: ImportResult) -> list[RowProblem]:
    """Problems of rows whose serial, or key, is already in the inventory."""
    serials: set[str] = set()
    keys: dict[bytes, str] = {}
    for entry in inventory.entries():
        serials.add((entry.first("cn") or b"").decode("utf-8", "replace").lower())
        try:
            item = inventory.mapper.item(entry)
        except (CodecError, DirectoryError, VaultError, ValueError, KeyError, TypeError):
            continue  # unreadable: `otpgate inventory` reports it
        if item.secret is not None:
            keys[key_fingerprint(item.secret)] = item.serial
    problems = []
    for row in result.tokens:
        if row.serial.lower() in serials:
            problems.append(RowProblem(row.row, f"serial {row.serial} is already in the inventory"))
        elif key_fingerprint(row.secret) in keys:
            other = keys[key_fingerprint(row.secret)]
            problems.append(
                RowProblem(row.row, f"its key is already in the inventory as serial {other}")
            )
    return problems


def import_tokens(
    inventory: ImportInventory,
    result: ImportResult,
    source: Path,
    data: bytes,
    *,
    partial: bool,
    dry_run: bool,
    progress: Callable[[int], Ticker],
) -> ImportOutcome:
    """Import the parsed ``result`` of the file ``source`` (raw bytes ``data``).

    Raises :class:`ImportRefused` when nothing was imported because of problem rows (they
    are marked in the error file) or because the error file cannot be created.
    ``progress(total)`` makes the progress report of the adding loop.
    """
    from otpgate.admin.render import PrivateFileRefused, create_private

    original = data.decode("utf-8", "replace")
    error_path = error_path_of(source)
    result = with_problems(result, inventory_clashes(inventory, result))
    # The error file holds every seed of the import file: create it (0600, exclusively,
    # never through a symlink) before anything is imported, so refusing it loses nothing.
    error_file: PrivateFile | None = None
    if (result.problems and not partial) or (partial and not dry_run):
        try:
            error_file = create_private(error_path, "the error file", "nothing was imported")
        except PrivateFileRefused as exc:
            raise ImportRefused(str(exc)) from exc

    def write_errors(res: ImportResult) -> None:
        if error_file is not None:
            error_file.write(error_file_text(original, res).encode("utf-8"))

    try:
        if result.problems and not partial:
            write_errors(result)
            raise ImportRefused(
                f"{len(result.problems)} of {result.rows} row(s) have problems; nothing was "
                f"imported; they are marked in {error_path} (fix them there and import it, "
                "or use --partial)"
            )
        if dry_run:
            return ImportOutcome(result, [], error_path)
        added, late = _add_rows(inventory, result, partial, progress)
        result = with_problems(result, late)
        if result.problems:
            write_errors(result)
        return ImportOutcome(result, added, error_path)
    finally:
        if error_file is not None:
            error_file.discard()  # still empty: no row had a problem


def _add_rows(
    inventory: ImportInventory,
    result: ImportResult,
    partial: bool,
    progress: Callable[[int], Ticker],
) -> tuple[list[str], list[RowProblem]]:
    """Add every token; the serials added and, with ``partial``, the rows the directory
    refused.  Any other failure removes what was added (nothing is half-imported)."""
    ticker = progress(len(result.tokens))
    added: list[str] = []
    late: list[RowProblem] = []
    try:
        for item in result.tokens:
            try:
                inventory.add(item.token, item.secret, item.last)
            except DirectoryError as exc:
                if not partial:
                    raise
                late.append(RowProblem(item.row, str(exc)))
            else:
                added.append(item.serial)
            ticker.advance()
    except BaseException:
        for serial in added:  # nothing is half-imported
            inventory.delete(serial)
        raise
    finally:
        ticker.finish()
    return added, late
