"""Users' last-seen raw entries (ciphertext only), reused for a few seconds to skip a search.

Safe because every state write is a compare-and-swap on the exact raw ``used`` value: a
stale entry makes the write fail, and the store re-reads.  What a stale entry can affect is
only what no write checks: group membership (policy), for at most the TTL since the entry
was last read from the directory.
"""

from __future__ import annotations

from collections import OrderedDict

from otpgate.directory.records import UserEntry


class EntryCache:
    def __init__(self, ttl: float, max_entries: int = 50_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._by_dn: OrderedDict[str, tuple[UserEntry, float]] = OrderedDict()
        self._names: OrderedDict[str, str] = OrderedDict()

    def get(self, name: str, now: float) -> UserEntry | None:
        dn = self._names.get(name.lower())
        found = self._by_dn.get(dn) if dn is not None else None
        if found is None:
            return None
        entry, expires = found
        if expires <= now:
            self.drop(entry)
            return None
        return entry

    def put(self, name: str, entry: UserEntry, now: float) -> None:
        """A freshly read entry: (re)starts its time to live.  What the cache hands out is
        marked ``from_cache``: decisions that no compare-and-swap checks re-read it."""
        if self.ttl <= 0:
            return
        entry = entry.cached_copy()
        dn = entry.dn.lower()
        self._names[name.lower()] = dn
        self._names.move_to_end(name.lower())
        self._by_dn[dn] = (entry, now + self.ttl)
        self._by_dn.move_to_end(dn)
        while len(self._by_dn) > self.max_entries:
            self._by_dn.popitem(last=False)
        while len(self._names) > self.max_entries:
            self._names.popitem(last=False)

    def written(self, entry: UserEntry) -> None:
        """Our own successful write: the new values, keeping the time of the last read."""
        dn = entry.dn.lower()
        found = self._by_dn.get(dn)
        if found is not None:
            self._by_dn[dn] = (entry.cached_copy(), found[1])

    def drop(self, entry: UserEntry) -> None:
        self._by_dn.pop(entry.dn.lower(), None)
