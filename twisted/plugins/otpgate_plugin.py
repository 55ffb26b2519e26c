"""twistd plugin: ``twistd -n otpgate --config PATH`` (or ``--demo``)."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "path of the otpgate TOML configuration file"],
        ["port", "p", "10389", "with --demo: loopback port of the demo LDAP proxy"],
    ]
    optFlags = [["demo", None, "run on the embedded demo directory (no external server)"]]

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
