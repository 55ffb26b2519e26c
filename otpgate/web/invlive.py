"""The portal's indexes (``otpgate.admin.invindex``) kept up to date from the directory.

* The first use reads the whole container once (paged, RFC 2696) and decodes every entry.
* Each later use (at most once a ``DELTA_SECONDS``) reads only the entries whose change
  stamp is at or above the watermark (entryCSN on OpenLDAP, indexed for syncprov;
  uSNChanged on AD; ``invindex.Watermark``): the entries changed in the last seconds.
  Entries whose values did not change (same fingerprint) are not decoded again.
* Entries deleted by someone else (another gateway, the CLI) are not seen by such a read:
  every ``RECONCILE_SECONDS`` of use the whole container is read again, in the background,
  and each page reads the rows it shows (a row whose entry is gone is dropped at once).
  The portal's own deletions are dropped from the index as they are made.

Reads go to the OTP-state server (the write pool), where the inventory is written; if that
server changes, the stamps mean nothing there and the next use reads everything again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from otpgate import ber
from otpgate.admin.invindex import (
    Row,
    RowIndex,
    Source,
    Watermark,
    assigned_source,
    fingerprint,
    stock_source,
)
from otpgate.directory.ldapdata import SCOPE_SUBTREE, SearchEntry
from otpgate.directory.paged import paged_search
from otpgate.errors import DirectoryError
from otpgate.web.render_inventory import Holder

log = Logger()

DELTA_SECONDS = 1.0
RECONCILE_SECONDS = 300.0


class LiveIndex:
    """One ``RowIndex`` (the inventory, or the tokens users hold) and how to refresh it."""

    def __init__(
        self,
        pool: Any,
        clock: Any,
        source: Source,
        base: str,
        scope: int,
        filter_ber: bytes,
        attributes: Sequence[str],
        stamp_attribute: str,
        ad: bool,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.source = source
        self.base = base
        self.scope = scope
        self.filter = filter_ber
        self.stamp = stamp_attribute
        self.attributes = (*attributes, stamp_attribute)
        self.ad = ad
        self.index = RowIndex()
        self.watermark = Watermark(ad)
        self.built_at: float | None = None
        self.refreshed_at = 0.0
        self.server: str | None = None
        self._waiters: list[defer.Deferred[None]] | None = None
        self.reads = {"full": 0, "delta": 0, "decoded": 0, "shown": 0}
        """How often each kind of read ran, how many entries it decoded, and how many were
        decoded for pages (tests, bench)."""

    def _now(self) -> float:
        return float(self.clock.seconds())

    async def current(self) -> RowIndex:
        """The index, brought up to date: read whole the first time, else by change stamps
        (at most once a ``DELTA_SECONDS``); read whole again in the background once the
        last full read is ``RECONCILE_SECONDS`` old."""
        now = self._now()
        if self.built_at is None:
            await self._exclusive(self._full)
        elif now - self.refreshed_at >= DELTA_SECONDS:
            await self._exclusive(self._delta)
        built = self.built_at
        if built is not None and self._now() - built >= RECONCILE_SECONDS and not self._waiters:
            d = defer.ensureDeferred(self._exclusive(self._full))
            d.addErrback(lambda f: log.failure("reading the index again failed", f))
        return self.index

    def shown(self, found: SearchEntry) -> tuple[Row, ...]:
        """The rows of an entry a page shows, decoded now from what was just read (the
        index learns of a change it had not seen yet)."""
        rows = self.source.rows(found)
        self.reads["shown"] += 1
        marker = fingerprint(self.source.values(found))
        if self.index.fingerprint(found.dn) != marker:
            self.index.put(found.dn, marker, rows)
        return rows

    def changed(self) -> None:
        """The portal itself just wrote: the next use reads the changes, however soon."""
        self.refreshed_at = float("-inf")

    def drop(self, serial: str) -> None:
        """A token the portal itself took out of the inventory."""
        self.index.drop_serial(serial)

    async def _exclusive(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` unless a refresh is under way; then wait for that one instead."""
        if self._waiters is not None:
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(waiter)
            await waiter
            return
        self._waiters = []
        try:
            await work()
        except Exception as exc:
            waiters, self._waiters = self._waiters, None
            for w in waiters:
                w.errback(exc)
            raise
        waiters, self._waiters = self._waiters, None
        for w in waiters:
            w.callback(None)

    def _take(self, found: SearchEntry, watermark: Watermark) -> None:
        watermark.see(found.first(self.stamp))
        marker = fingerprint(self.source.values(found))
        if self.index.fingerprint(found.dn) == marker:
            return
        self.reads["decoded"] += 1
        self.index.put(found.dn, marker, self.source.rows(found))

    async def _full(self) -> None:
        conn = await self.pool.connection()
        watermark = Watermark(self.ad)
        seen: list[str] = []
        base = self.base.lower()
        async for page in paged_search(conn, self.base, self.filter, self.attributes, self.scope):
            for found in page:
                if found.dn.lower() != base:
                    self._take(found, watermark)
                    seen.append(found.dn)
        self.index.keep_only(seen)
        watermark.settle(self._now())
        self.watermark = watermark
        self.server = conn.url.url
        self.built_at = self.refreshed_at = self._now()
        self.reads["full"] += 1

    async def _delta(self) -> None:
        since = self.watermark.since(self._now())
        conn = await self.pool.connection()
        if since is None or conn.url.url != self.server:
            await self._full()
            return
        wanted = ber.filter_and(
            self.filter, ber.filter_greater_or_equal(self.stamp.encode(), since)
        )
        base = self.base.lower()
        async for page in paged_search(conn, self.base, wanted, self.attributes, self.scope):
            for found in page:
                if found.dn.lower() != base:
                    self._take(found, self.watermark)
        self.watermark.settle(self._now())
        self.refreshed_at = self._now()
        self.reads["delta"] += 1


class PortalIndexes:
    """The inventory pages' two indexes: the stock ("stock") and the hardware tokens users
    hold ("held"), each made at first use; and which user a state entry belongs to."""

    def __init__(self, gateway: Any, clock: Any, inventory: Any, user_filter: bytes) -> None:
        self.gateway = gateway
        self.clock = clock
        self.inventory = inventory
        self.user_filter = user_filter
        self._made: dict[str, LiveIndex] = {}
        self._users: dict[str, str] = {}

    def live(self, which: str) -> LiveIndex:
        if which not in self._made:
            self._made[which] = self._new(which)
        return self._made[which]

    def _new(self, which: str) -> LiveIndex:
        state = self.gateway.store.mapper
        d = state.config
        ad = d.profile.server == "ad"
        stamp = "uSNChanged" if ad else "entryCSN"
        pool = self.gateway.write_pool
        if which == "stock":
            mapper = self.inventory.mapper
            return LiveIndex(
                pool, self.clock, stock_source(mapper), mapper.container, SCOPE_SUBTREE,
                ber.filter_present(b"cn"), mapper.attributes, stamp, ad,
            )  # fmt: skip
        # Every holder of OTP state (its ``used`` value is always there), not only those
        # with tokens: a user whose last token was taken must be read again too.
        holders = ber.filter_present(d.used.spec.name.encode())
        if state.container is not None:
            base, wanted = state.container, holders
        else:
            base, wanted = d.base_dn, ber.filter_and(self.user_filter, holders)
        attributes = ("cn", d.profile.id_attribute, d.tokens.spec.name)
        return LiveIndex(
            pool, self.clock, assigned_source(state), base, SCOPE_SUBTREE, wanted, attributes,
            stamp, ad,
        )  # fmt: skip

    def wrote(self, *which: str) -> None:
        for name in which:
            if name in self._made:
                self._made[name].changed()

    async def warm(self) -> None:
        """Both indexes read once (at 100,000 tokens that first read takes seconds:
        docs/DECISIONS.md, "Inventory pages")."""
        for which in ("stock", "held"):
            try:
                await self.live(which).current()
            except DirectoryError as exc:  # the first view will try again
                log.warn("reading the {which} index failed: {error}", which=which, error=exc)

    async def holders(self, query: str, exact: bool, most: int) -> tuple[list[Holder], int]:
        """Tokens users hold whose serial is ``query`` (``exact``) or whose serial or label
        contains it (at most ``most``), with the user; and how many more there are."""
        index = await self.live("held").current()
        if exact:
            rows = index.find(query)
            total = len(rows)
        else:
            rows, total = index.page("serial", False, query, 0, most)
        return [Holder(r, await self.user_of(r.holder)) for r in rows], total - len(rows)

    async def user_of(self, entry: str) -> str:
        """The DN of the user whose state ``entry`` holds ("" when there is none): the
        entry itself, or in the container layout the user with the state entry's id."""
        mapper = self.gateway.store.mapper
        if mapper.container is None:
            return entry
        key = entry.lower()
        if key in self._users:
            return self._users[key]
        try:
            entry_id = mapper.entry_id_of_rdn(entry.split(",", 1)[0].split("=", 1)[1])
        except (IndexError, ValueError):
            return ""
        d = mapper.config
        id_attribute = d.profile.id_attribute
        wanted = ber.filter_and(self.user_filter, ber.filter_equal(id_attribute.encode(), entry_id))
        conn = await self.gateway.read_pool.connection()
        found = await conn.search(d.base_dn, wanted, [id_attribute], size_limit=2)
        dn = found[0].dn if len(found) == 1 else ""
        if len(self._users) > 10_000:
            self._users.clear()
        self._users[key] = dn
        return dn
