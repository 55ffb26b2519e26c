"""otpgate: a one-time-password gateway for LDAP and Active Directory."""

__version__ = "0.1.0"
