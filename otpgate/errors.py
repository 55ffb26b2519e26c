"""Every error otpgate raises on purpose, in four families under one base.

* ``ConfigError``: the configuration is wrong; the message names the key.
* ``DirectoryError``: the directory could not be asked, or said no (with its result code).
* ``FormatError``: data otpgate reads is not what it must be: a stored value (``CodecError``,
  ``TamperedState``), a keyring or envelope (``VaultError``), an import file
  (``ImportFormatError``), a protocol message (``BerError``, ``MalformedPacket``,
  ``ldapproxy.proxyheader.ProxyHeaderError``), a Yubico OTP (``InvalidYubicoOtp``).
* ``PolicyError``: an admin action the rules do not allow (too many devices, no such token),
  or a login a front end's authorization refuses (``AuthorizationRefused``).

A caller that must fail closed on "anything otpgate refuses" catches ``OtpgateError``; one
that must tell the cases apart catches a family.  Import them from here.
"""

from __future__ import annotations


class OtpgateError(Exception):
    """Base of every error otpgate raises on purpose; never carries a secret."""


# -- configuration ------------------------------------------------------------------------


class ConfigError(OtpgateError, ValueError):
    """A configuration problem, naming the key and what is allowed."""


# -- the directory ----------------------------------------------------------------------------


class DirectoryError(OtpgateError):
    """The directory could not be reached or answered with an error."""

    def __init__(self, message: str, result_code: int | None = None) -> None:
        super().__init__(message)
        self.result_code = result_code


class DirectoryUnavailable(DirectoryError):
    """No server answered (connection refused, lost, or timed out): fail closed."""


class UserNotFound(DirectoryError):
    pass


class AmbiguousUser(DirectoryError):
    pass


class ConcurrentUpdate(DirectoryError):
    """Lost the compare-and-swap race more often than the configured retries."""

    def __init__(self, message: str, conflicts: int = 0) -> None:
        super().__init__(message)
        self.conflicts = conflicts


class WriteRefused(DirectoryError):
    """The directory refused a write for another reason than a lost race."""


class InventoryError(DirectoryError):
    """The token inventory cannot do what was asked (unknown serial, taken, ...)."""


# -- data formats ------------------------------------------------------------------------------


class FormatError(OtpgateError, ValueError):
    """Data otpgate reads is malformed or not authentic."""


class CodecError(FormatError):
    """A stored value cannot be encoded or decoded; the message names user and attribute."""


class TamperedState(CodecError):
    """Stored values that otpgate cannot have written together: refused, never repaired."""


class StateNotMigrated(CodecError):
    """The state still sits in the user's own entry while ``state_dn`` is set: refused (it
    reads as "never enrolled" otherwise) until ``otpgate migrate-state`` moves it."""


class VaultError(FormatError):
    """A value cannot be decrypted or a keyring is unusable.  Never carries key material."""


class ImportFormatError(FormatError):
    """An import file cannot be read at all (not a row problem)."""


class PskcKeyError(ImportFormatError):
    """A PSKC file's encryption key (pre-shared or from the password) is missing or wrong."""


class BerError(FormatError):
    """Malformed BER, or a PDU larger than allowed."""


class MalformedPacket(FormatError):
    """A RADIUS packet that is not well-formed: dropped and counted."""


class InvalidYubicoOtp(FormatError):
    """Not a Yubico OTP that decrypts and checks out; the message never holds the OTP."""


# -- policy -------------------------------------------------------------------------------------


class PolicyError(OtpgateError, ValueError):
    """An admin action the enrollment policy does not allow (too many devices...)."""


class NoSuchToken(PolicyError):
    pass


class AuthorizationRefused(PolicyError):
    """A login the pipeline would accept, refused by what its front end derives from the
    entry (RADIUS reply rules: a group membership that could not be read, a value that does
    not convert).  The message is the audited reason; it never reaches the client."""
