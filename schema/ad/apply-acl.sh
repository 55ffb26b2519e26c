#!/bin/sh
# apply-acl.sh - hide otpgate's state attributes in Active Directory (Samba AD DC tools).
#
#   apply-acl.sh [-n] -H URL [credentials] USERS_OU_DN SERVICE_SID
#
# otpgate keeps its state in postalAddress (encrypted seeds), registeredAddress
# (token records) and wWWHomePage (one-time-use state, lockout). By default every
# authenticated user can read them and every user can write their own. This script
# makes them readable and writable by SERVICE_SID (the otpgate service account, or a
# group holding it) and nobody else below USERS_OU_DN, except the directory's own
# administrators (Domain Admins, Account Operators, SYSTEM). See README.md for the
# why, and for the Windows (dsacls / PowerShell) equivalent.
#
# It changes two things, and is idempotent (run it again after creating or moving
# users into the OU: new user objects get the schema's default ACL):
#   1. USERS_OU_DN, inheritable to user and inetOrgPerson objects:
#        deny Authenticated Users ReadProperty+WriteProperty on the three attributes,
#        then re-grant Authenticated Users ReadProperty on the Personal-Information and
#        Web-Information property sets (their other attributes stay readable).
#   2. every user / inetOrgPerson object below USERS_OU_DN (not computers, not the
#      service account itself), explicitly:
#        deny SELF ReadProperty+WriteProperty on the three attributes,
#        allow SERVICE_SID ReadProperty+WriteProperty on the three attributes,
#        remove (OA;;RP;<Personal-Information>;;AU) and (OA;;RP;<Web-Information>;;AU),
#        the schema-default grants that are explicit on every user and would
#        otherwise outrank the OU's inherited deny.
#
# URL and credentials are those of samba-tool, for example
#   -H ldaps://dc1.example.org --simple-bind-dn='CN=Administrator,CN=Users,DC=example,DC=org'
#      --password=... --option='tls cafile=/etc/ssl/example-ca.pem'
#      --option='tls verify peer=ca_and_name'
#   -H ldap://dc1.example.org -U 'EXAMPLE\Administrator'   (NTLM/Kerberos, sealed)
#   -H /var/lib/samba/private/sam.ldb                        (as root on the DC)
# With ldaps, the host name in URL must match the DC's certificate (Samba's client
# does not accept IP addresses there), and "tls verify peer = ca_and_name" plus a
# "tls cafile" make it check the certificate.
#
#   -n, --dry-run   show the resulting explicit ACLs, change nothing
#
# Needs Samba's Python bindings (package python3-samba); the interpreter is the one
# samba-tool uses unless PYTHON is set. Exit status: 0 done, 1 error, 2 usage.

set -eu

if [ -z "${PYTHON:-}" ]; then
	tool=$(command -v samba-tool || true)
	if [ -n "$tool" ]; then
		PYTHON=$(sed -n '1s/^#! *//p' "$tool")
	fi
	PYTHON=${PYTHON:-python3}
fi

# shellcheck disable=SC2086  # PYTHON may be "/usr/bin/env python3"
exec $PYTHON -c '
import optparse
import sys

import ldb
import samba.getopt as options
from samba.auth import system_session
from samba.dcerpc import misc, security
from samba.ndr import ndr_pack, ndr_unpack
from samba.samdb import SamDB

# schemaIDGUIDs / rightsGuids of the base schema (checked against the server below).
ATTRIBUTES = {
    "postalAddress": "bf9679fc-0de6-11d0-a285-00aa003049e2",
    "registeredAddress": "bf967a10-0de6-11d0-a285-00aa003049e2",
    "wWWHomePage": "bf967a7a-0de6-11d0-a285-00aa003049e2",
}
PROPERTY_SETS = {  # attributeSecurityGUID of the attributes above
    "Personal-Information": "77b5b886-944a-11d1-aebd-0000f80367c1",
    "Web-Information": "e45795b3-9455-11d1-aebd-0000f80367c1",
}
CLASSES = {
    "user": "bf967aba-0de6-11d0-a285-00aa003049e2",
    "inetOrgPerson": "4828cc14-1437-45bc-9b07-ad6f015e5f28",
}


def fail(message):
    print("apply-acl.sh: " + message, file=sys.stderr)
    sys.exit(1)


parser = optparse.OptionParser("apply-acl.sh [-n] -H URL [credentials] USERS_OU_DN SERVICE_SID")
parser.add_option("-H", "--URL", dest="url", help="LDB URL of the DC (as for samba-tool)")
parser.add_option("-n", "--dry-run", action="store_true", help="change nothing")
sambaopts = options.SambaOptions(parser)
credopts = options.CredentialsOptions(parser)
parser.add_option_group(sambaopts)
parser.add_option_group(credopts)
opts, args = parser.parse_args()
if len(args) != 2 or not opts.url:
    parser.print_usage(sys.stderr)
    sys.exit(2)
ou_dn, service_sid = args
lp = sambaopts.get_loadparm()
try:
    samdb = SamDB(url=opts.url, session_info=system_session(),
                  credentials=credopts.get_credentials(lp), lp=lp)
except ldb.LdbError as exc:
    fail("cannot connect to %s: %s" % (opts.url, exc.args[-1]))
domain_sid = security.dom_sid(samdb.get_domain_sid())


def guid(value):
    return str(ndr_unpack(misc.GUID, value))


# Never trust hard-coded GUIDs blindly: a wrong one silently protects nothing.
schema_dn = samdb.get_schema_basedn()
for name, expected in list(ATTRIBUTES.items()) + list(CLASSES.items()):
    res = samdb.search(schema_dn, ldb.SCOPE_ONELEVEL, "(lDAPDisplayName=%s)" % name,
                       ["schemaIDGUID", "attributeSecurityGUID"])
    if len(res) != 1 or guid(res[0]["schemaIDGUID"][0]) != expected:
        fail("schemaIDGUID of %s is not %s on this server" % (name, expected))
    if "attributeSecurityGUID" in res[0]:
        if guid(res[0]["attributeSecurityGUID"][0]) not in PROPERTY_SETS.values():
            fail("%s is not in the Personal-/Web-Information property set here" % name)

try:
    service = samdb.search("<SID=%s>" % service_sid, ldb.SCOPE_BASE, attrs=["objectSid"])
except ldb.LdbError:
    service = []
if len(service) != 1:
    fail("no account or group with SID %s" % service_sid)
print("service principal: %s" % service[0].dn)


def ace_sddl(ace):
    single = security.descriptor()
    single.dacl_add(ace)
    text = single.as_sddl(domain_sid)
    return text[text.index("("):]


def normalize(sddl):
    return [ace_sddl(a) for a in security.descriptor.from_sddl("D:" + sddl, domain_sid).dacl.aces]


def update(dn, first, last, remove=()):
    """Explicit DACL of dn := first + (explicit ACEs - remove - first - last) + last."""
    res = samdb.search(dn, ldb.SCOPE_BASE, attrs=["nTSecurityDescriptor"],
                       controls=["sd_flags:1:4"])
    sd = ndr_unpack(security.descriptor, res[0]["nTSecurityDescriptor"][0])
    explicit = [ace_sddl(a) for a in sd.dacl.aces
                if not a.flags & security.SEC_ACE_FLAG_INHERITED_ACE]
    first, last, remove = normalize(first), normalize(last), set(normalize("".join(remove)))
    kept = [a for a in explicit if a not in remove and a not in first and a not in last]
    new = first + kept + last
    if new == explicit:
        return False
    flags = "D:"
    if sd.type & security.SEC_DESC_DACL_PROTECTED:
        flags += "P"
    if sd.type & security.SEC_DESC_DACL_AUTO_INHERIT_REQ:
        flags += "AR"
    if sd.type & security.SEC_DESC_DACL_AUTO_INHERITED:
        flags += "AI"
    print("%s\n  %s" % (dn, flags + "".join(new)))
    if not opts.dry_run:
        msg = ldb.Message(ldb.Dn(samdb, dn))
        msg["nTSecurityDescriptor"] = ldb.MessageElement(
            ndr_pack(security.descriptor.from_sddl(flags + "".join(new), domain_sid)),
            ldb.FLAG_MOD_REPLACE, "nTSecurityDescriptor")
        # sd_flags 4 = DACL only: owner, group and SACL stay as they are. The server
        # recomputes the inherited ACEs (here and below) itself.
        samdb.modify(msg, controls=["sd_flags:1:4"])
    return True


# 1. The OU: inherited deny for everybody (deny ACEs first), re-grant the rest of the sets.
ou_first = "".join("(OD;CIIO;RPWP;%s;%s;AU)" % (a, c)
                   for c in CLASSES.values() for a in ATTRIBUTES.values())
ou_last = "".join("(OA;CIIO;RP;%s;%s;AU)" % (s, c)
                  for c in CLASSES.values() for s in PROPERTY_SETS.values())
changed = update(ou_dn, ou_first, ou_last)

# 2. Every user object below it.
user_first = "".join("(OD;;RPWP;%s;;PS)" % a for a in ATTRIBUTES.values())
user_last = "".join("(OA;;RPWP;%s;;%s)" % (a, service_sid) for a in ATTRIBUTES.values())
user_remove = ["(OA;;RP;%s;;AU)" % s for s in PROPERTY_SETS.values()]
users = samdb.search(ou_dn, ldb.SCOPE_SUBTREE,
                     "(&(objectClass=user)(!(objectClass=computer))(!(objectSid=%s)))"
                     % service_sid, attrs=["adminCount"])
updated = sum(update(str(u.dn), user_first, user_last, user_remove) for u in users)
for u in users:
    if str(u.get("adminCount", idx=0) or "0") != "0":
        print("warning: %s is a protected account (adminCount=1): on Windows, SDProp "
              "resets its ACL from AdminSDHolder every hour" % u.dn, file=sys.stderr)
print("%s: OU %s, %d of %d user objects %s" % (
    "dry run" if opts.dry_run else "done", "changed" if changed else "unchanged",
    updated, len(users), "to change" if opts.dry_run else "changed"))
' "$@"
