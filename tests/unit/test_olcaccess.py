"""Evaluating OpenLDAP access rules: may a user write her own OTP state? (Pure.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from otpgate.config import parse_config
from otpgate.directory.ldapdata import SearchEntry
from otpgate.errors import DirectoryError
from otpgate.errors import DirectoryUnavailable
from otpgate.directory.olcaccess import grants_write
from otpgate.directory.olcsyntax import (
    AttributeTypes,
    Match,
    Unprovable,
    ordered_rules,
    parse_name,
    parse_rule,
    words,
)
from otpgate.directory.state_acl import AclFacts, Database, evidence, judge, probe

SUFFIX = "dc=example,dc=org"
SERVICE = f"cn=otpgate,ou=services,{SUFFIX}"
ROOT = f"cn=admin,{SUFFIX}"
TYPES = (
    "( 2.5.4.0 NAME 'objectClass' SYNTAX 1.3.6.1.4.1.1466.115.121.1.38 )",
    "( 2.5.4.41 NAME 'name' SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )",
    "( 2.5.4.3 NAME ( 'cn' 'commonName' ) SUP name )",
    "( 2.5.4.11 NAME ( 'ou' 'organizationalUnitName' ) SUP name )",
    "( 0.9.2342.19200300.100.1.25 NAME ( 'dc' 'domainComponent' ) SYNTAX 1.3.6.1.4.1.1466.115.121.1.26 )",
    "( 0.9.2342.19200300.100.1.1 NAME ( 'uid' 'userid' ) SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )",
    "( 2.5.4.35 NAME 'userPassword' SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 )",
    "( 2.5.4.16 NAME 'postalAddress' SYNTAX 1.3.6.1.4.1.1466.115.121.1.41 )",
    "( 2.5.4.26 NAME 'registeredAddress' SUP postalAddress SYNTAX 1.3.6.1.4.1.1466.115.121.1.41 )",
    "( 0.9.2342.19200300.100.1.39 NAME 'homePostalAddress' SYNTAX 1.3.6.1.4.1.1466.115.121.1.41 )",
    "( 1.3.6.1.4.1.99999.1 NAME 'otpgateSeed' SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 )",
    "( 1.3.6.1.4.1.99999.2 NAME 'otpgateToken' SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 )",
    "( 1.3.6.1.4.1.99999.3 NAME 'otpgateUsed' SYNTAX 1.3.6.1.4.1.1466.115.121.1.40 )",
    "( 2.5.4.13 NAME 'description' SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )",
)
SVC = f'dn.exact="{SERVICE}"'
PASSWORDS = "to attrs=userPassword by self write by anonymous auth by * none"
STATE = f"to attrs=postalAddress,registeredAddress,homePostalAddress by {SVC} write by * none"
READ_ALL = f"to * by {SVC} read by users read by * none"
SHIPPED = [PASSWORDS, STATE, READ_ALL]
SELF_WRITE = f"to * by {SVC} write by self write by users read by * none"


def config(profile="openldap", **directory):
    doc = {
        "directory": {
            "profile": profile,
            "urls": ["ldap://127.0.0.1:389"],
            "base_dn": SUFFIX,
            "bind_dn": SERVICE,
            "bind_password": "pw",
            **directory,
        },
        "vault": {"keyring": "k.json"},
    }
    return parse_config(doc, Path("/")).directory


def mdb(rules, suffix=SUFFIX, n=1, root=ROOT):
    return Database(
        f"olcDatabase={{{n}}}mdb,cn=config",
        (suffix,),
        (root,) if root else (),
        tuple(f"{{{i}}}{r}".encode() for i, r in enumerate(rules)),
    )


FRONTEND_DEFAULT = ('to dn.base="" by * read',)


def frontend(rules=FRONTEND_DEFAULT):
    access = tuple(f"{{{i}}}{r}".encode() for i, r in enumerate(rules))
    return Database("olcDatabase={-1}frontend,cn=config", access=access, frontend=True)


def verdict(*databases, profile="openldap", **directory):
    facts = AclFacts("ldap://a", TYPES, (frontend(), *databases))
    return judge(facts, config(profile, **directory))


def findings(rules, **kw):
    return " | ".join(verdict(mdb(rules), **kw).findings)


# -- the shipped rules and the plain cases ------------------------------------------------


def test_the_shipped_rules_keep_the_state_to_the_service_account():
    assert verdict(mdb(SHIPPED)).safe
    schema_rule = (
        f"to attrs=otpgateSeed,otpgateToken,otpgateUsed,otpgateInventoryToken by {SVC} write "
        "by * none"
    )
    klass = f"to attrs=objectClass val=otpgateUser by {SVC} write by * break"
    shipped = [PASSWORDS, schema_rule, klass, STATE, READ_ALL]
    assert verdict(mdb(shipped), profile="openldap-schema").safe
    assert verdict(mdb(shipped)).safe


@pytest.mark.parametrize("who", ["self", "users", "*", "realself", "realusers"])
@pytest.mark.parametrize("access", ["write", "manage", "add", "delete", "selfwrite", "=wrscx",
                                    "+az", "+w", "+m", "realselfwrite"])
def test_self_users_and_everyone_with_write_are_self_writable(who, access):
    got = findings([f"to attrs=homePostalAddress by {who} {access} by * break", *SHIPPED])
    assert "lets a user write her own homePostalAddress" in got
    assert "postalAddress," not in got  # the other two stay with the shipped rule


@pytest.mark.parametrize("access", ["read", "search", "compare", "auth", "disclose", "none",
                                    "=rscx", "+r", "-w", "+0", "=0", ""])
def test_reading_is_not_writing(access):
    assert verdict(mdb([f"to attrs=homePostalAddress by self {access} by * break",
                        *SHIPPED])).safe


def test_a_user_writable_site_is_writable_on_every_state_attribute():
    got = findings([PASSWORDS, SELF_WRITE])
    assert "'by self write' lets a user write her own postalAddress, registeredAddress, " \
           "homePostalAddress" in got
    assert "olcDatabase={1}mdb olcAccess {1}" in got


def test_first_match_wins():
    assert verdict(mdb([PASSWORDS, STATE, SELF_WRITE])).safe
    assert "lets a user" in findings([PASSWORDS, SELF_WRITE, STATE])


def test_anonymous_write_counts_she_need_not_bind():
    got = findings(["to attrs=homePostalAddress by anonymous write by * none", *SHIPPED])
    assert "anonymous clients" in got and "homePostalAddress" in got


# -- <what>: attribute lists, object classes, DNs, filters --------------------------------


def test_attribute_lists_select_subtypes_too():
    # registeredAddress is a subtype of postalAddress: the rule for postalAddress opens both
    got = findings(["to attrs=postalAddress by self write by * break", *SHIPPED])
    assert "her own postalAddress, registeredAddress" in got
    # but not the other way round
    got = findings(["to attrs=registeredAddress by self write by * break", *SHIPPED])
    assert "her own registeredAddress" in got and "postalAddress," not in got
    # attributes that are not the state's, and the pseudo-attributes, select nothing of it
    other = "to attrs=description,userPassword,entry,children by self write by * break"
    assert verdict(mdb([other, *SHIPPED])).safe


@pytest.mark.parametrize("attrs", ["@inetOrgPerson", "!person", "homePostalAddress;lang-en",
                                   "unknownAttribute"])
def test_object_classes_options_and_unknown_names_may_select_it(attrs):
    got = findings([f"to attrs={attrs} by self write by * break", *SHIPPED])
    assert "may let a user write her own" in got


def test_a_rule_excluding_the_state_attribute_protects_only_that_one():
    rules = [f"to attrs=homePostalAddress by {SVC} write by * none", SELF_WRITE]
    got = findings(rules)
    assert "her own postalAddress, registeredAddress" in got and "homePostalAddress" not in got


@pytest.mark.parametrize("what,may", [
    (f'dn.subtree="ou=people,{SUFFIX}"', True),   # some users
    (f'dn.subtree="{SUFFIX}"', False),             # all of them: certain
    ('dn.subtree=""', False),
    (f'dn.children="{SUFFIX}"', True),             # all but the base entry
    (f'dn.one="ou=people,{SUFFIX}"', True),
    (f'dn.regex="^uid=[^,]+,ou=people,{SUFFIX}$"', True),
    ('dn.regex=".*"', False),
    (f'dn="uid=.*,ou=people,{SUFFIX}"', True),
    ("filter=(objectClass=inetOrgPerson)", True),
    ('attrs=homePostalAddress val.regex="^x"', True),
])
def test_entry_selectors(what, may):
    got = findings([f"to {what} by self write by * break", *SHIPPED])
    verb = "may let" if may else "lets"
    assert f"'by self write' {verb} a user write her own" in got


@pytest.mark.parametrize("what", [
    'dn.subtree="dc=elsewhere,dc=net"', f'dn.base="{SUFFIX.split(",", 1)[1]}"',
    'dn.base="ou=services,dc=elsewhere"',
])
def test_rules_for_other_entries_are_passed_over(what):
    assert verdict(mdb([f"to {what} by self write", *SHIPPED])).safe


def test_uncertain_rules_do_not_decide_later_ones_still_count():
    # a rule for some users only: the others fall through to the self-write rule
    rules = [f'to dn.subtree="ou=people,{SUFFIX}" attrs=homePostalAddress by {SVC} write '
             "by * none", PASSWORDS, SELF_WRITE]
    assert "homePostalAddress" in findings(rules)
    # for all of them: it decides
    rules[0] = rules[0].replace("ou=people,", "")
    assert "homePostalAddress" not in findings(rules)


def test_dn_spellings_compare_by_rdn_and_oid():
    rules = ['to dn.subtree="DC=Example, domainComponent=ORG" attrs=homePostalAddress '
             'by dn.exact="CN=otpgate,OU=services,DC=example,DC=org" write by * none',
             SELF_WRITE]
    assert "homePostalAddress" not in findings(rules)
    types = AttributeTypes(TYPES)
    assert parse_name("cn=a\\2Cb,dc=org", types) == parse_name("CN=A\\,B, DC=ORG", types)
    assert parse_name("x-unknown=a,dc=org", types) is None


# -- <who>: clauses, order, control ----------------------------------------------------------


@pytest.mark.parametrize("who,may", [
    (f'group.exact="cn=admins,ou=groups,{SUFFIX}"', True),
    ('set="user & this/manager"', True),
    ("dnattr=manager", True),
    (f'dn.exact="uid=helpdesk,ou=people,{SUFFIX}"', True),   # if she is the help desk
    (f'dn.subtree="ou=people,{SUFFIX}"', True),
    (f'dn.subtree="{SUFFIX}"', False),
    (f'dn.exact,expand="uid=$1,ou=people,{SUFFIX}"', True),
    ('dn.regex="^uid=.*"', True),
    ("self.level{1}", True),
    ("self ssf=128", True),
    ("peername.ip=127.0.0.1 users", True),
    ("dynacl/aci", True),
])
def test_who_clauses_that_may_be_the_user(who, may):
    got = findings([f"to attrs=homePostalAddress by {who} write by * none", *SHIPPED])
    assert ("may let" if may else "lets") + " a user write her own homePostalAddress" in got


@pytest.mark.parametrize("who", [SVC, f'dn.base="{ROOT}"', 'dn.exact="cn=admin,dc=other,dc=net"',
                                 "anonymous peername.ip=10.0.0.1 users"])
def test_the_service_account_the_rootdn_and_strangers_are_not_her(who):
    """(``anonymous ... users``: both at once, which nobody is.)"""
    rules = [f"to attrs=homePostalAddress by {who} write by * none", *SHIPPED]
    assert verdict(mdb(rules)).safe, findings(rules)


def test_controls_break_and_continue_go_on_stop_ends():
    stop = [f"to attrs=homePostalAddress by {SVC} write by users read", SELF_WRITE]
    assert "homePostalAddress" not in findings(stop)
    brk = [f"to attrs=homePostalAddress by {SVC} write by * break", SELF_WRITE]
    assert "homePostalAddress" in findings(brk)
    cont = ["to attrs=homePostalAddress by users read continue by self +w", *SHIPPED]
    assert "homePostalAddress" in findings(cont)
    maybe_stop = [f"to attrs=homePostalAddress by group=cn=x,{SUFFIX} read by self write",
                  *SHIPPED]  # not a member: the next clause
    assert "homePostalAddress" in findings(maybe_stop)


def test_the_frontend_rules_come_after_the_databases():
    facts = AclFacts("ldap://a", TYPES, (frontend([SELF_WRITE]), mdb([PASSWORDS])))
    got = " | ".join(judge(facts, config()).findings)
    assert "olcDatabase={-1}frontend olcAccess {0}" in got and "homePostalAddress" in got
    facts = AclFacts("ldap://a", TYPES, (frontend([SELF_WRITE]), mdb(SHIPPED)))
    assert judge(facts, config()).safe


def test_the_rootdn_bypasses_rules_and_is_trusted():
    rules = [f'to attrs=homePostalAddress by dn.base="{ROOT}" write by * none', *SHIPPED]
    assert verdict(mdb(rules)).safe
    assert not verdict(mdb(rules, root=None)).safe  # without olcRootDN it is just a DN


def test_databases_below_base_dn_are_judged_too():
    below = mdb([SELF_WRITE], suffix=f"ou=people,{SUFFIX}", n=2)
    got = verdict(mdb(SHIPPED), below).findings
    assert got and "olcDatabase={2}mdb" in got[0]
    other = mdb([SELF_WRITE], suffix="dc=elsewhere,dc=net", n=3)
    assert verdict(mdb(SHIPPED), other).safe
    # the deepest database holding base_dn is the one that holds it
    parent = mdb([SELF_WRITE], suffix="dc=org", n=4)
    assert verdict(parent, mdb(SHIPPED)).safe


# -- what cannot be proven -----------------------------------------------------------------


@pytest.mark.parametrize("databases,why", [
    ((), "no database"),
    ((mdb([], n=1),), "no olcAccess is visible"),
    ((mdb(SHIPPED, suffix="dc=elsewhere,dc=net"),), "holds dc=example,dc=org"),
    ((Database("olcDatabase={1}ldap,cn=config", (SUFFIX,), (), (b"{0}to * by * read",)),),
     "only on mdb"),
    ((Database("olcDatabase={1}mdb,cn=config", (SUFFIX,), (),
               (b"{0}" + PASSWORDS.encode(), b"{2}" + STATE.encode())),), "missing"),
    ((Database("olcDatabase={1}mdb,cn=config", (SUFFIX,), (), (STATE.encode(),)),), "index"),
    ((mdb(['to dn.subtree="unbalanced by * write']),), "unbalanced"),
    ((mdb(["to * by self write extra"]),), "cannot read"),
    ((mdb(["to nonsense=1 by self read"]),), "unknown <what>"),
])
def test_what_cannot_be_evaluated_is_unproven(databases, why):
    got = judge(AclFacts("ldap://a", TYPES, (frontend(), *databases)), config())
    assert not got.safe and got.unproven is not None and why in got.unproven, got
    assert "cannot be proven" in evidence([got])


def test_an_unreadable_config_or_schema_is_unproven():
    assert "may not read" in judge(AclFacts("ldap://a", unreadable="may not read"), config()).unproven
    assert "no attribute types" in judge(AclFacts("ldap://a", (), (mdb(SHIPPED),)), config()).unproven


# -- the probe -------------------------------------------------------------------------------


def run(step, answers):
    query = next(step)
    asked = [query]
    for answer in answers:
        try:
            query = step.throw(answer) if isinstance(answer, Exception) else step.send(answer)
        except StopIteration as done:
            return done.value, asked
        asked.append(query)
    raise AssertionError(f"the step asked more: {asked}")


def test_probe_reads_the_schema_then_the_databases():
    dse = [SearchEntry("", {"subschemasubentry": [b"cn=Subschema"]})]
    schema = [SearchEntry("cn=Subschema", {"attributetypes": [t.encode() for t in TYPES]})]
    dbs = [
        SearchEntry("olcDatabase={-1}frontend,cn=config",
                    {"objectclass": [b"olcDatabaseConfig", b"olcFrontendConfig"]}),
        SearchEntry("olcDatabase={1}mdb,cn=config", {
            "objectclass": [b"olcDatabaseConfig", b"olcMdbConfig"],
            "olcsuffix": [SUFFIX.encode()], "olcrootdn": [ROOT.encode()],
            "olcaccess": [f"{{{i}}}{r}".encode() for i, r in enumerate(SHIPPED)]}),
    ]
    facts, asked = run(probe("ldap://a"), [dse, schema, dbs])
    assert [q.base for q in asked] == ["", "cn=Subschema", "cn=config"]
    assert "olcRootPW" not in asked[2].attributes and "olcAccess" in asked[2].attributes
    assert facts.databases[0].frontend and facts.databases[1].kind == "mdb"
    assert judge(facts, config()).safe
    refused, _ = run(probe("ldap://a"), [dse, schema, DirectoryError("50", 50)])
    assert "may not read cn=config" in refused.unreadable
    assert not judge(refused, config()).safe
    hidden, _ = run(probe("ldap://a"), [dse, schema, []])
    assert "may not read cn=config" in hidden.unreadable
    nothing, _ = run(probe("ldap://a"), [[SearchEntry("", {})]])
    assert "subschemaSubentry" in nothing.unreadable
    with pytest.raises(DirectoryUnavailable):
        run(probe("ldap://a"), [dse, DirectoryUnavailable("gone")])


# -- syntax ------------------------------------------------------------------------------------


def test_words_follow_slapds_quoting():
    assert words('to dn.base="cn=a b,dc=x"  by  * none') == ["to", "dn.base=cn=a b,dc=x", "by",
                                                            "*", "none"]
    assert words(r'to dn.regex="^a\"b$" by *') == ["to", 'dn.regex=^a"b$', "by", "*"]
    assert words('to * by ""') == ["to", "*", "by", ""]
    with pytest.raises(Unprovable):
        words('to dn="open')


def test_rules_parse_into_what_and_clauses():
    rule = parse_rule('to dn.subtree="dc=x" attrs=a,b by self.level{1} ssf=128 =wr continue '
                      "by group/groupOfNames/member.exact=cn=g,dc=x +r break by * none", "r")
    assert rule.what == ("dn.subtree=dc=x", "attrs=a,b")
    assert [(c.who, c.access, c.control) for c in rule.clauses] == [
        (("self.level{1}", "ssf=128"), "=wr", "continue"),
        (("group/groupOfNames/member.exact=cn=g,dc=x",), "+r", "break"),
        (("*",), "none", "stop"),
    ]
    (clause,) = parse_rule("to * by users self=w", "r").clauses
    assert clause.who == ("users",) and clause.access == "self=w"
    assert grants_write("self=w") and grants_write("mystery") and not grants_write("self+r")
    ordered = ordered_rules([b"{1}to * by * read", b"{0}to * by * none"], "db")
    assert [r.origin for r in ordered] == ["db olcAccess {0}", "db olcAccess {1}"]


def test_attribute_types_resolve_names_oids_and_sup():
    types = AttributeTypes(TYPES)
    assert types.covers("postalAddress", "registeredAddress") is Match.YES
    assert types.covers("2.5.4.16", "REGISTEREDADDRESS") is Match.YES
    assert types.covers("registeredAddress", "postalAddress") is Match.NO
    assert types.covers("name", "cn") is Match.YES and types.covers("cn", "ou") is Match.NO
    assert types.covers("nosuch", "cn") is Match.MAYBE
    # keywords inside quoted strings are text, not keywords
    tricky = AttributeTypes([
        "( 1.1 NAME 'a' DESC 'not SUP b, NAME c' SUP 'b' )", "( 1.2 NAME 'b' )",
        "( 1.3 NAME 'c' )"])
    assert tricky.covers("b", "a") is Match.YES and tricky.oid("c") == "1.3"


@pytest.mark.parametrize("front", [(), None])
def test_frontend_rules_the_service_account_cannot_see_are_unproven(front):
    """slapd goes on with the frontend's rules after the database's: a frontend entry that is
    not shown, or shows no rules (hidden by a narrower read grant), may hold `to * by self
    write`.  Only database rules that end with `to * ... by * <access>` make that moot."""
    shown = () if front is None else (frontend(front),)
    open_end = AclFacts("ldap://a", TYPES, (*shown, mdb([PASSWORDS, STATE])))
    got = judge(open_end, config())
    assert not got.safe and "frontend" in (got.unproven or ""), got
    closed = AclFacts("ldap://a", TYPES, (*shown, mdb(SHIPPED)))
    assert judge(closed, config()).safe


def test_only_space_and_tab_separate_words_as_in_slapd():
    """slapd reads `by dn.exact=cn=nobody<NBSP>none<NBSP>by<NBSP>*<NBSP>none by self write` as
    one odd <who> followed by `by self write`; splitting on every Unicode space would read an
    early `by * none` and call it safe."""
    nbsp = "\u00a0"
    rule = (f"to attrs=postalAddress,registeredAddress,homePostalAddress by "
            f"dn.exact=cn=nobody{nbsp}none{nbsp}by{nbsp}*{nbsp}none by self write")
    got = judge(AclFacts("ldap://a", TYPES, (frontend(), mdb([PASSWORDS, rule]))), config())
    assert not got.safe and "does not read as white space" in (got.unproven or ""), got


def test_a_user_who_may_write_her_own_authzto_may_write_her_state():
    """`authz-policy to` and a `to * by self write` tail: the state attributes are closed, but
    alice names the service account in her own authzTo and writes her state as it with the
    proxied authorization control (done on slapd 2.5: rc=0).  authzTo is held to the state's
    rule wherever the schema has it."""
    authz = "( 1.3.6.1.4.1.4203.666.1.8 NAME 'authzTo' SYNTAX 1.3.6.1.4.1.4203.666.2.7 )"
    tail = f"to * by {SVC} write by self write by users read by * none"
    facts = AclFacts("ldap://a", (*TYPES, authz), (frontend(), mdb([PASSWORDS, STATE, tail])))
    got = judge(facts, config())
    assert not got.safe and any("authzTo" in f for f in got.findings), got
    shipped = AclFacts("ldap://a", (*TYPES, authz), (frontend(), mdb(SHIPPED)))
    assert judge(shipped, config()).safe
