"""The embedded demo directory: ldaptor's in-memory tree served on loopback.

It exists so that ``twistd otpgate --demo`` runs with no external server.
Two additions make it behave like a real directory where otpgate relies on
it: Modify refuses to delete a value that is not there (noSuchAttribute) or
add one that is (attributeOrValueExists), which is what makes otpgate's
compare-and-swap safe; and it answers the Who Am I? extended operation so
``ldapwhoami`` works.
"""

from __future__ import annotations

from importlib import resources
from io import BytesIO
from typing import Any

from ldaptor import delta, inmemory, interfaces
from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldaperrors, ldapserver
from twisted.internet import protocol

DEMO_BASE_DN = "dc=demo,dc=otpgate"
DEMO_SERVICE_DN = "cn=otpgate,ou=services,dc=demo,dc=otpgate"
DEMO_SERVICE_PASSWORD = "otpgate-demo-service"  # noqa: S105 (the demo directory's fixed account)
DEMO_USER_DN = "uid=alice,ou=people,dc=demo,dc=otpgate"
DEMO_USER_PASSWORD = "alice-password"  # noqa: S105
DEMO_EXEMPT_DN = "uid=app,ou=services,dc=demo,dc=otpgate"
WHO_AM_I_OID = b"1.3.6.1.4.1.4203.1.11.3"


class DemoDirectoryServer(ldapserver.LDAPServer):  # type: ignore[misc]
    def handle_LDAPModifyRequest(self, request: Any, controls: Any, reply: Any) -> Any:
        self.checkControls(controls)
        root = interfaces.IConnectedLDAPEntry(self.factory)
        mod = delta.ModifyOp.fromLDAP(request)
        d = root.lookup(mod.dn)

        def apply(entry: Any) -> Any:
            # Check every modification against the entry first, then apply all: atomic,
            # because nothing else runs on the reactor in between.
            scratch = {key: set(values) for key, values in entry.items()}
            for m in mod.modifications:
                present = scratch.setdefault(m.key, set())
                if isinstance(m, delta.Delete):
                    missing = set(m) - present if m else (set() if present else {b""})
                    if missing:
                        raise ldaperrors.LDAPNoSuchAttribute(m.key)
                    present.difference_update(m if m else present.copy())
                elif isinstance(m, delta.Add):
                    if set(m) & present:
                        raise ldaperrors.LDAPAttributeOrValueExists(m.key)
                    present.update(m)
            for m in mod.modifications:
                if isinstance(m, delta.Delete) and m and set(m) == set(entry.get(m.key, ())):
                    del entry[m.key]
                else:
                    m.patch(entry)
            return entry.commit()

        d.addCallback(apply)
        d.addCallback(lambda _: pureldap.LDAPModifyResponse(resultCode=0))
        return d

    def extendedRequest_WhoAmI(self, data: Any, reply: Any) -> Any:
        dn = b"" if self.boundUser is None else b"dn:" + self.boundUser.dn.getText().encode()
        return pureldap.LDAPExtendedResponse(resultCode=0, response=dn)

    extendedRequest_WhoAmI.oid = WHO_AM_I_OID  # type: ignore[attr-defined]


class DemoDirectoryFactory(protocol.ServerFactory):
    protocol = DemoDirectoryServer

    def __init__(self, root: Any) -> None:
        self.root = root

    def __conform__(self, iface: Any) -> Any:
        # Lets ldaptor find the tree (IConnectedLDAPEntry) without a global adapter registry.
        return self.root if iface is interfaces.IConnectedLDAPEntry else None


async def load_demo_tree() -> Any:
    ldif = resources.files("otpgate").joinpath("data/demo.ldif").read_bytes()
    return await inmemory.fromLDIFFile(BytesIO(ldif))
