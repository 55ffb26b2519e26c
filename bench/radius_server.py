"""Run otpgate's RADIUS front end alone (for bench/radius.py).

    python bench/radius_server.py CONFIG [--shared]

The same objects twistd runs (Gateway + radius_services), without the LDAP proxy.
``--shared`` binds with SO_REUSEPORT so that several of these processes share the port.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout, not an installed copy

from twisted.application import service
from twisted.internet import reactor
from twisted.logger import globalLogBeginner

from otpgate.config import load_config
from otpgate.logs import open_log_file
from otpgate.radius.service import radius_services
from otpgate.service import Gateway
from otpgate.vault import Keyring


def main() -> None:
    config = load_config(Path(sys.argv[1]))
    globalLogBeginner.beginLoggingTo([], redirectStandardIO=False)  # no start-up buffer
    open_log_file(config.logging)  # one audit event per authentication, as in production
    gateway = Gateway(config, Keyring.load(config.keyring), reactor)
    gateway.audit.start()  # buffered audit file, as LoggingService does under twistd
    top = service.MultiService()
    for svc in radius_services(gateway, config, reactor, shared="--shared" in sys.argv[2:]):
        svc.setServiceParent(top)
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.addSystemEventTrigger("after", "shutdown", gateway.close)
    reactor.run()


if __name__ == "__main__":
    main()
