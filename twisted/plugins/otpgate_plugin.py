"""twistd plugin: ``twistd -n otpgate --config PATH`` (or ``--demo``)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{port} is not a port number (1-65535)")
    return port


_port.coerceDoc = "A port number, 1-65535."  # type: ignore[attr-defined]


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "path of the otpgate TOML configuration file"],
        ["port", "p", 10389, "with --demo: loopback TCP port of the LDAP proxy", _port],
        ["radius-port", None, 11812, "with --demo: loopback UDP port of RADIUS", _port],
        ["web-port", None, 10080, "with --demo: loopback TCP port of the web portal", _port],
    ]
    optFlags = [["demo", None, "run every front end on the embedded demo directory"]]

    def postOptions(self) -> None:
        if not self["demo"] and not self["config"]:
            raise usage.UsageError("give --config PATH, or --demo")


@implementer(IServiceMaker, IPlugin)
class OtpgateServiceMaker:
    tapname = "otpgate"
    description = "One-time-password gateway for LDAP and Active Directory"
    options = Options

    def makeService(self, options: Any) -> Any:
        from otpgate.twistd import make_service_from_options

        return make_service_from_options(options)


service_maker = OtpgateServiceMaker()
