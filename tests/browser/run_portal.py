"""Run the gateway with only its web portal, from a config file, until killed (for the tests).

``python -m tests.browser.run_portal CONFIG``: what ``twistd otpgate`` will do once
``make_service`` adds ``otpgate.web.web_services``.  Prints ``ready`` when listening.
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.application import service
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver

from otpgate.config import load_config
from otpgate.service import Gateway
from otpgate.vault import Keyring
from otpgate.web.service import web_services


def main() -> None:
    config = load_config(Path(sys.argv[1]))
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    keyring = Keyring.load(config.keyring)
    gateway = Gateway(config, keyring, reactor)
    top = service.MultiService()
    for s in web_services(gateway, config, reactor, keyring):
        s.setServiceParent(top)  # type: ignore[attr-defined]
    top.startService()
    gateway.audit.start()
    reactor.callWhenRunning(lambda: print("ready", flush=True))  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
