"""Directory profiles: which attributes hold otpgate's state on AD and OpenLDAP (data only).

``KNOWN_ATTRIBUTES`` gives each known attribute's syntax and the largest value the
directory accepts; ``PROFILES`` maps a profile name (``[directory] profile``) to its
attributes, identity attribute, user filter and object classes.
"""

from __future__ import annotations

from dataclasses import dataclass

from otpgate.codec import AttributeSpec, Syntax

# Known attributes: syntax and the largest value the directory accepts.
KNOWN_ATTRIBUTES: dict[str, dict[str, AttributeSpec]] = {
    "ad": {
        "postaladdress": AttributeSpec("postalAddress", Syntax.UNICODE, 4096),
        "registeredaddress": AttributeSpec("registeredAddress", Syntax.OCTET, 4096),
        "wwwhomepage": AttributeSpec("wWWHomePage", Syntax.UNICODE, 2048),
    },
    "openldap": {
        "postaladdress": AttributeSpec("postalAddress", Syntax.POSTAL, None),
        "registeredaddress": AttributeSpec("registeredAddress", Syntax.POSTAL, None),
        "homepostaladdress": AttributeSpec("homePostalAddress", Syntax.POSTAL, None),
        "otpgateseed": AttributeSpec("otpgateSeed", Syntax.OCTET, None),
        "otpgatetoken": AttributeSpec("otpgateToken", Syntax.OCTET, None),
        "otpgateused": AttributeSpec("otpgateUsed", Syntax.OCTET, None),
        "otpgateinventorytoken": AttributeSpec("otpgateInventoryToken", Syntax.OCTET, None),
    },
}


@dataclass(frozen=True)
class Profile:
    name: str
    server: str  # "ad" | "openldap"
    seed: str
    tokens: str
    used: str
    inventory: str
    id_attribute: str
    search_attribute: str
    user_filter: str
    upn_attribute: str
    aux_class: str = ""
    """Object class a user entry needs before the attributes can be written ("" for none)."""
    inventory_classes: tuple[str, ...] = ("top", "organizationalRole")
    """Object classes of an inventory entry (cn=SERIAL under inventory_dn)."""
    state_classes: tuple[str, ...] = ("top", "organizationalRole")
    """Object classes of a state entry (cn=USER-UUID under state_dn): they must allow the
    seed, tokens and used attributes."""


PROFILES = {
    "ad": Profile(
        "ad",
        "ad",
        "postalAddress",
        "registeredAddress",
        "wWWHomePage",
        "postalAddress",
        "objectGUID",
        "sAMAccountName",
        # Disabled accounts are no users (for code-only logins too: CHAP, MS-CHAPv2, otp-only).
        "(&(objectCategory=person)(objectClass=user)"
        "(!(userAccountControl:1.2.840.113556.1.4.803:=2)))",
        "userPrincipalName",
    ),
    "openldap": Profile(
        "openldap",
        "openldap",
        "postalAddress",
        "registeredAddress",
        "homePostalAddress",
        "postalAddress",
        "entryUUID",
        "uid",
        "(objectClass=inetOrgPerson)",
        "mail",
        # organizationalRole has postalAddress and registeredAddress, not homePostalAddress.
        state_classes=("top", "organizationalRole", "extensibleObject"),
    ),
    "openldap-schema": Profile(
        "openldap-schema",
        "openldap",
        "otpgateSeed",
        "otpgateToken",
        "otpgateUsed",
        "otpgateInventoryToken",
        "entryUUID",
        "uid",
        "(objectClass=inetOrgPerson)",
        "mail",
        aux_class="otpgateUser",
        inventory_classes=("top", "device", "otpgateInventory"),
        state_classes=("top", "organizationalRole", "otpgateUser"),
    ),
}


AD_SELF_WRITABLE = frozenset(
    name.lower()
    for name in """
    assistant c facsimileTelephoneNumber homePhone homePostalAddress info
    internationalISDNNumber ipPhone l mSMQDigests mSMQSignCertificates mobile
    msDS-ExternalDirectoryObjectId msDS-FailedInteractiveLogonCount
    msDS-FailedInteractiveLogonCountAtLastSuccessfulLogon msDS-GeoCoordinatesAltitude
    msDS-GeoCoordinatesLatitude msDS-GeoCoordinatesLongitude msDS-HostServiceAccount
    msDS-LastFailedInteractiveLogonTime msDS-LastSuccessfulInteractiveLogonTime
    msDS-SupportedEncryptionTypes msDS-cloudExtensionAttribute1 msDS-cloudExtensionAttribute2
    msDS-cloudExtensionAttribute3 msDS-cloudExtensionAttribute4 msDS-cloudExtensionAttribute5
    msDS-cloudExtensionAttribute6 msDS-cloudExtensionAttribute7 msDS-cloudExtensionAttribute8
    msDS-cloudExtensionAttribute9 msDS-cloudExtensionAttribute10
    msDS-cloudExtensionAttribute11 msDS-cloudExtensionAttribute12
    msDS-cloudExtensionAttribute13 msDS-cloudExtensionAttribute14
    msDS-cloudExtensionAttribute15 msDS-cloudExtensionAttribute16
    msDS-cloudExtensionAttribute17 msDS-cloudExtensionAttribute18
    msDS-cloudExtensionAttribute19 msDS-cloudExtensionAttribute20
    otherFacsimileTelephoneNumber otherHomePhone otherIpPhone otherMobile otherPager
    otherTelephone pager personalTitle physicalDeliveryOfficeName postOfficeBox postalAddress
    postalCode preferredDeliveryMethod primaryInternationalISDNNumber primaryTelexNumber
    registeredAddress st street streetAddress telephoneNumber teletexTerminalIdentifier
    telexNumber thumbnailPhoto userCert userCertificate userSMIMECertificate userSharedFolder
    userSharedFolderOther x121Address
    url wWWHomePage
    msPKI-CredentialRoamingTokens msPKIAccountCredentials msPKIDPAPIMasterKeys
    msPKIRoamingTimeStamp
    """.split()  # noqa: SIM905 - a list of names, as the schema spells them
)
"""Attributes every AD user may write in their own entry: the members of the
Personal-Information and Web-Information property sets (MS-ADTS 3.1.1.2.3.3; the
attributeSecurityGUID of each attribute in the Windows Server 2016 AD DS schema), which
the default security descriptor of the user class lets SELF write.  Nothing that decides
what a user may reach is read from them."""

SECRET_ATTRIBUTES = frozenset(
    name.lower()
    for name in """
    userPassword unicodePwd dBCSPwd supplementalCredentials ntPwdHistory lmPwdHistory
    msDS-ManagedPassword ms-Mcs-AdmPwd msLAPS-Password msLAPS-EncryptedPassword
    sambaNTPassword sambaLMPassword sambaPasswordHistory
    """.split()  # noqa: SIM905 - a list of names
)
"""Password attributes: never copied into anything otpgate sends."""
