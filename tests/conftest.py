"""Session-wide fixtures: real directory servers on loopback.

- ``slapd``: OpenLDAP with the stock schemas only (the stock-attribute profile).
- ``slapd_otpgate``: OpenLDAP with ``schema/otpgate.schema`` loaded.
- ``samba_dc``: a Samba AD DC provisioned for this run (ports 389/636/3268/3269 on 127.0.0.1).

All three run the project's ACLs / Samba defaults; see ``tests/servers/``. A server that
cannot start makes its tests ERROR: these fixtures never skip. Tests that use them are
marked ``slapd`` / ``samba`` automatically, so ``-m "not samba"`` deselects them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import MultiProvider, SambaDC, Slapd

_SLAPD_FIXTURES = frozenset({"slapd", "slapd_otpgate", "multi_provider"})
_SAMBA_FIXTURES = frozenset({"samba_dc"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec is not None else None
        if backend == "samba":
            names.add("samba_dc")
        elif backend in ("slapd-stock", "slapd-schema"):
            names.add("slapd")
        if names & _SLAPD_FIXTURES:
            item.add_marker(pytest.mark.slapd)
        if names & _SAMBA_FIXTURES:
            item.add_marker(pytest.mark.samba)


def _running(server: Slapd) -> Iterator[Slapd]:
    server.start()  # raises (the tests ERROR) if the server cannot start: never a skip
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """OpenLDAP, stock schemas (core, cosine, inetorgperson, nis), our example ACLs."""
    yield from _running(Slapd(tmp_path_factory.mktemp("slapd"), schema="stock"))


@pytest.fixture(scope="session")
def slapd_otpgate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """OpenLDAP with the otpgate schema and ACLs."""
    yield from _running(Slapd(tmp_path_factory.mktemp("slapd-otpgate"), schema="otpgate"))


@pytest.fixture(scope="session")
def multi_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiProvider]:
    """Two OpenLDAP multi-provider slapds (serverID 1 and 2, syncrepl both ways) and a
    read-only consumer of the first, replication converged (tests/servers/replicated.py);
    the service account may read the second provider's cn=config."""
    repl = MultiProvider(
        tmp_path_factory.mktemp("multi-provider"), schema="stock", config_readable=True
    )
    repl.start()  # raises (the tests ERROR) if a server cannot start: never a skip
    try:
        yield repl
    finally:
        repl.stop()


@pytest.fixture(scope="session")
def samba_dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SambaDC]:
    """Samba AD DC for OTPGATE.TEST (about 5 s to provision and start)."""
    dc = SambaDC(tmp_path_factory.mktemp("samba"))
    dc.start()
    try:
        yield dc
    finally:
        dc.stop()


@pytest.fixture(params=["slapd-stock", "slapd-schema", "samba"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> object:
    """One of the three directory set-ups (see tests/integration/backends.py)."""
    from tests.integration.backends import make_backend

    return make_backend(request.param, request, tmp_path_factory.getbasetemp())
