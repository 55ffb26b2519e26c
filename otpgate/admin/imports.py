"""Importing hardware tokens into the inventory: the flow behind ``otpgate import`` and the
portal's import page.

The file is already parsed (``otpgate.importers``).  Here, once for both: rows that clash
with the inventory and rows whose user cannot get the token become row problems
(``clash_problems``, ``user_problems``); the rows are added as one engine step
(``add_rows``) whose caller removes what it added if anything goes wrong (``remove_rows``),
so nothing is ever half-imported; rows with a user are then assigned, each with the one
assignment flow (``assign_rows``).  ``Error_<file>`` is :func:`error_text`.

The CLI's own part (``import_tokens``): the error file (every seed of the import file, so
0600, exclusive, never through a symlink) is created *before* anything is imported; without
``partial`` a single problem row imports nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from otpgate.admin.enrollment import DEVICES
from otpgate.admin.inventory import assign
from otpgate.directory import engine
from otpgate.directory import inventory as inv
from otpgate.directory.engine import Step
from otpgate.directory.inventory import InventoryMapper
from otpgate.directory.ldapdata import SearchEntry
from otpgate.directory.records import UserEntry
from otpgate.directory.state import StateMapper
from otpgate.errors import (
    AmbiguousUser,
    CodecError,
    DirectoryError,
    OtpgateError,
    PolicyError,
    UserNotFound,
    VaultError,
)
from otpgate.importers import (
    ImportedToken,
    ImportResult,
    RowProblem,
    key_fingerprint,
    with_problems,
)
from otpgate.importers.errorfile import error_file_name, error_file_text
from otpgate.tokens import Token

if TYPE_CHECKING:
    from otpgate.admin.render import PrivateFile, Ticker

T = TypeVar("T")


class ImportRefused(OtpgateError):
    """Nothing was imported: problem rows without ``partial``, or no error file."""


class ImportInventory(Protocol):
    """The inventory an import needs (``SyncInventory`` in the CLI)."""

    @property
    def mapper(self) -> InventoryMapper: ...

    def entries(self) -> Sequence[SearchEntry]: ...

    def run(self, step: Step[T]) -> T: ...


@dataclass(frozen=True)
class Assigning:
    """What assigning rows to their users needs: the user state, the device limit."""

    mapper: StateMapper
    max_tokens: int
    retries: int


@dataclass(frozen=True)
class Assignment:
    row: int
    serial: str
    user: str
    token: Token | None
    """The token as the user now has it; None when it stayed in the inventory (``error``)."""
    error: str = ""


@dataclass(frozen=True)
class ImportOutcome:
    result: ImportResult
    """The file's rows with every problem: the parser's, clashes, rows the directory refused."""
    imported: list[str]
    """Serials added to the inventory (none in a dry run)."""
    error_path: Path
    """Where ``Error_<file>`` is (written only if ``result`` has problems)."""
    assigned: list[Assignment] = field(default_factory=list)
    """Rows with a user: what became of each assignment."""


def error_path_of(source: Path) -> Path:
    return source.with_name(error_file_name(source))


def error_text(data: bytes, result: ImportResult) -> bytes:
    """The bytes of ``Error_<file>`` for the import file ``data`` (CLI and portal alike)."""
    return error_file_text(data.decode("utf-8", "replace"), result).encode("utf-8")


# -- checks (pure, or engine steps) ---------------------------------------------------------


def clash_problems(
    result: ImportResult, serials: Container[str], keys: Mapping[bytes, str]
) -> list[RowProblem]:
    """Problems of rows whose serial (``serials``: lower-cased) or key (``keys``: key
    fingerprint -> serial) is already in the inventory."""
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


def known_tokens(
    mapper: InventoryMapper, entries: Iterable[SearchEntry]
) -> tuple[set[str], dict[bytes, str]]:
    """The serials (lower-cased) and key fingerprints of inventory entries (decrypted)."""
    serials: set[str] = set()
    keys: dict[bytes, str] = {}
    for entry in entries:
        serials.add((entry.first("cn") or b"").decode("utf-8", "replace").lower())
        try:
            item = mapper.item(entry)
        except (CodecError, DirectoryError, VaultError, ValueError, KeyError, TypeError):
            continue  # unreadable: `otpgate inventory` reports it
        if item.secret is not None:
            keys[key_fingerprint(item.secret)] = item.serial
    return serials, keys


def inventory_clashes(inventory: ImportInventory, result: ImportResult) -> list[RowProblem]:
    """Problems of rows whose serial, or key, is already in the inventory."""
    serials, keys = known_tokens(inventory.mapper, inventory.entries())
    return clash_problems(result, serials, keys)


def user_problems(
    mapper: StateMapper, result: ImportResult, max_tokens: int
) -> Step[tuple[list[RowProblem], dict[str, UserEntry]]]:
    """Problems of rows whose user cannot get the token: no such user, several, or more
    devices than ``max_tokens`` once every row for that user is assigned.  Also the entries
    the users resolved to (by name as written), for checks of the caller's own."""
    wanted: dict[str, list[ImportedToken]] = {}
    for row in result.tokens:
        if row.user:
            wanted.setdefault(row.user, []).append(row)
    problems: list[RowProblem] = []
    found: dict[str, UserEntry] = {}
    for name, rows in wanted.items():
        try:
            user = yield from engine.resolve(mapper, name)
            devices = sum(
                1 for t in mapper.decode(user, with_secrets=False).tokens if t.type in DEVICES
            )
        except (UserNotFound, AmbiguousUser) as exc:
            problems.extend(RowProblem(r.row, f"user {name!r}: {exc}") for r in rows)
            continue
        except (CodecError, DirectoryError) as exc:
            problems.extend(RowProblem(r.row, f"user {name!r} cannot be read: {exc}") for r in rows)
            continue
        found[name] = user
        adding = sum(1 for r in rows if r.token.type in DEVICES)
        if devices + adding > max_tokens:
            problems.extend(
                RowProblem(
                    r.row,
                    f"user {name!r} has {devices} device(s); {adding} more would pass the "
                    f"maximum of {max_tokens} ([otp].max_tokens_per_user)",
                )
                for r in rows
            )
    return problems, found


# -- adding and assigning (engine steps: the CLI and the portal run the same ones) ----------


def add_rows(
    mapper: InventoryMapper,
    result: ImportResult,
    partial: bool,
    added: list[str],
    advance: Callable[[], None] = lambda: None,
) -> Step[list[RowProblem]]:
    """Add every token of ``result``; each serial added is appended to ``added`` as it is,
    so the caller can remove them (``remove_rows``) whatever stops the step.  With
    ``partial`` a row the directory refuses is a problem returned; without, it raises."""
    late: list[RowProblem] = []
    for item in result.tokens:
        try:
            yield from inv.add_item(mapper, item.token, item.secret, item.last)
        except DirectoryError as exc:
            if not partial:
                raise
            late.append(RowProblem(item.row, str(exc)))
        else:
            added.append(item.serial)
        advance()
    return late


def remove_rows(mapper: InventoryMapper, serials: Sequence[str]) -> Step[None]:
    """Undo ``add_rows``: delete what it added (nothing is half-imported)."""
    for serial in serials:
        yield from inv.delete(mapper, serial)


def assign_rows(
    assigning: Assigning, inventory: InventoryMapper, result: ImportResult, imported: Container[str]
) -> Step[list[Assignment]]:
    """Give each imported row that names a user to that user: the assignment flow of
    ``otpgate assign`` (claim, enroll, remove), once per row.  A row that cannot be assigned
    keeps its token in the inventory (the flow puts it back) and says why."""
    done: list[Assignment] = []
    for row in result.tokens:
        if not row.user or row.serial not in imported:
            continue
        try:
            token = yield from assign(
                assigning.mapper,
                inventory,
                row.serial,
                row.user,
                assigning.max_tokens,
                assigning.retries,
            )
        except (PolicyError, DirectoryError, CodecError) as exc:
            done.append(Assignment(row.row, row.serial, row.user, None, str(exc)))
        else:
            done.append(Assignment(row.row, row.serial, row.user, token))
    return done


# -- the CLI's flow ---------------------------------------------------------------------------


def import_tokens(
    inventory: ImportInventory,
    result: ImportResult,
    source: Path,
    data: bytes,
    *,
    partial: bool,
    dry_run: bool,
    progress: Callable[[int], Ticker],
    assigning: Assigning | None = None,
) -> ImportOutcome:
    """Import the parsed ``result`` of the file ``source`` (raw bytes ``data``).

    Raises :class:`ImportRefused` when nothing was imported because of problem rows (they
    are marked in the error file) or because the error file cannot be created.
    ``progress(total)`` makes the progress report of the adding loop.  Rows naming a user
    are checked (``user_problems``) and assigned once imported (``assigning``; without it,
    such rows are problems).
    """
    from otpgate.admin.render import PrivateFileRefused, create_private

    error_path = error_path_of(source)
    extra = inventory_clashes(inventory, result)
    if assigning is not None:
        extra += inventory.run(user_problems(assigning.mapper, result, assigning.max_tokens))[0]
    else:
        extra += [
            RowProblem(r.row, "this import cannot assign tokens to users")
            for r in result.tokens
            if r.user
        ]
    result = with_problems(result, extra)
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
            error_file.write(error_text(data, res))

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
        added, late = _add(inventory, result, partial, progress)
        result = with_problems(result, late)
        if result.problems:
            write_errors(result)
        assigned: list[Assignment] = []
        if assigning is not None:
            assigned = inventory.run(assign_rows(assigning, inventory.mapper, result, set(added)))
        return ImportOutcome(result, added, error_path, assigned)
    finally:
        if error_file is not None:
            error_file.discard()  # still empty: no row had a problem


def _add(
    inventory: ImportInventory,
    result: ImportResult,
    partial: bool,
    progress: Callable[[int], Ticker],
) -> tuple[list[str], list[RowProblem]]:
    """``add_rows`` with a progress report; whatever stops it (an error, Ctrl-C) removes
    the rows already added."""
    ticker = progress(len(result.tokens))
    added: list[str] = []
    try:
        late = inventory.run(add_rows(inventory.mapper, result, partial, added, ticker.advance))
    except BaseException:
        inventory.run(remove_rows(inventory.mapper, added))
        raise
    finally:
        ticker.finish()
    return added, late
