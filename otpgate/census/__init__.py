"""The census: who binds, read from the audit trail (``otpgate census``).

``model`` counts audit events per account in constant-size accumulators and gives each
account a verdict (a service, a person without a token, a person ready for codes);
``suggest`` turns the services that still need a code into ``[[policy.exempt]]`` tables
scoped to their sources; ``read`` finds rotated files and streams their lines (JSON or text,
gzip or not).  The CLI and the help-desk page use only what this module exports.
"""

from otpgate.census.model import FILTERS, NO_TOKEN, READY, SERVICE, AccountRow, Census
from otpgate.census.read import rotated_siblings, scan

__all__ = [
    "FILTERS",
    "NO_TOKEN",
    "READY",
    "SERVICE",
    "AccountRow",
    "Census",
    "rotated_siblings",
    "scan",
]
