"""RADIUS front end: PAP (append, challenge, otp-only), CHAP and MS-CHAPv2 over OTPs.

Pure modules: ``packet`` (codec), ``access`` (what a request asks), ``chap``
(CHAP / MS-CHAPv2 / MPPE math), ``challenge`` (State store), ``dedup``
(RFC 5080 duplicate cache), ``ratelimit``, ``clients``, ``config`` ([radius]).
Twisted: ``server`` (protocol and handler) and ``service`` (``radius_services``).
"""
