"""Paged searches (RFC 2696) over the gateway's own client: how the portal reads a whole
container (the inventory, every user's tokens) in pieces, on one connection, without
hitting the server's size limits per search (AD's MaxPageSize, OpenLDAP's ``size.pr``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from otpgate.directory.ldapdata import SearchEntry
from otpgate.errors import DirectoryError

PAGE_SIZE = 500
MAX_PAGES = 20_000
"""A server that hands out cookies for ever is cut off (10 million entries)."""


class PagingConnection(Protocol):
    async def search_page(
        self,
        base: str,
        filter_ber: bytes,
        attributes: Sequence[str],
        scope: int,
        page_size: int,
        cookie: bytes,
    ) -> tuple[list[SearchEntry], bytes]: ...


async def paged_search(
    conn: PagingConnection,
    base: str,
    filter_ber: bytes,
    attributes: Sequence[str],
    scope: int,
    page_size: int = PAGE_SIZE,
) -> AsyncIterator[list[SearchEntry]]:
    """The entries of one search, a page at a time (the caller may work between pages)."""
    cookie = b""
    for _page in range(MAX_PAGES):
        entries, cookie = await conn.search_page(
            base, filter_ber, attributes, scope, page_size, cookie
        )
        yield entries
        if not cookie:
            return
    raise DirectoryError(f"search under {base}: more than {MAX_PAGES} pages")
