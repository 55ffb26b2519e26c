"""Rights beyond a login, decided on fresh reads: who is help desk, and whom the help desk
may not change (administrators and other help-desk members).

Group membership is what the store resolved for the configured groups (``memberOf``, the
groups' ``member`` values, and on AD ``tokenGroups``: nested and primary groups too).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from otpgate.auth.settings import AuthSettings
from otpgate.directory.records import UserEntry
from otpgate.directory.store import OtpStore
from otpgate.dn import normalise_dn
from otpgate.errors import DirectoryError

log = Logger()

class Rights:
    def __init__(self, settings: AuthSettings, store: OtpStore, read_pool: Any) -> None:
        self.settings = settings
        self.store = store
        self.read_pool = read_pool

    async def member(self, user: UserEntry, groups: tuple[str, ...]) -> bool:
        """Whether ``user`` is in one of ``groups`` (configured groups: the store resolved the
        user's membership in them, nested and primary groups included; see
        ``engine.memberships``)."""
        if not groups:
            return False
        return bool({normalise_dn(g) for g in groups} & {normalise_dn(g) for g in user.groups})

    async def is_helpdesk(self, dn: str) -> bool:
        """A member of ``[web] helpdesk_groups`` now (False when it cannot be read)."""
        groups = self.settings.helpdesk_groups
        if not groups:
            return False
        try:
            return await self.member(await self.store.resolve(dn, fresh=True), groups)
        except DirectoryError as exc:
            log.warn("help-desk group check for {dn} failed: {error}", dn=dn, error=str(exc))
        return False

    async def protected(self, dn: str) -> str | None:
        """Why the help desk may not change ``dn``, or None.

        Administrators (``[policy] admin_groups``) and help-desk members (the signed-in
        member included) are changed by the directory's own admins with the CLI: a help-desk
        member who could reset or issue scratch codes for another member or an admin could
        take over that account, or raise their own rights.  When the groups cannot be read
        the answer is "protected" (fail closed)."""
        try:
            fresh = await self.store.resolve(dn, fresh=True)
            if await self.member(fresh, self.settings.policy.admin_groups):
                return "an administrator"
            if await self.member(fresh, self.settings.helpdesk_groups):
                return "a help-desk member"
        except DirectoryError as exc:
            log.warn("help desk: group check of {dn} failed: {error}", dn=dn, error=str(exc))
            return "a user whose groups cannot be read now"
        return None
