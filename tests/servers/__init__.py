"""Real directory servers on loopback for the test suite (no pytest dependency).

- :class:`Slapd`: a throwaway OpenLDAP slapd (stock or otpgate schema) on free ports.
- :class:`MultiProvider`: two multi-provider slapds replicating each other and a consumer.
- :class:`SambaDC`: a freshly provisioned Samba AD DC (OTPGATE.TEST) on 127.0.0.1:389/636.
- ``samba_pair.SambaPair``: dc1 + dc2 joined on 127.0.0.2 (run inside a network namespace:
  tests/integration/samba2_scenario.py).
- :func:`make_server_tls`: a throwaway CA and server certificate.

``tests/conftest.py`` wraps them in session-scoped fixtures.
"""

from .replicated import MultiProvider
from .samba import SambaDC
from .slapd import Slapd, free_port, ldif_entry, ssha
from .tlsca import TLSPaths, make_server_tls

__all__ = [
    "MultiProvider",
    "SambaDC",
    "Slapd",
    "TLSPaths",
    "free_port",
    "ldif_entry",
    "make_server_tls",
    "ssha",
]
