"""Security profile 2: Basic auth over TLS, with a throwaway CA (trustme)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from websockets.exceptions import InvalidStatus

from tests.ocpp.conftest import PASSWORD, PASSWORD_HASH, StartGateway
from tests.ocpp.peers import MemoryDirectory, Station, open_station


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    cert.private_key_pem.write_to_path(str(key_path))
    return ca, cert_path, key_path


async def test_profile2_station_over_wss_works_and_over_ws_is_refused(
    start_gateway: StartGateway, tls_files: tuple[trustme.CA, Path, Path]
) -> None:
    ca, cert_path, key_path = tls_files
    directory = MemoryDirectory()
    directory.add("P2", PASSWORD, password_hash=PASSWORD_HASH, profile=2)
    directory.add("P1", PASSWORD, password_hash=PASSWORD_HASH, profile=1)
    secure = await start_gateway(directory, scheme="wss", tls_cert=cert_path, tls_key=key_path)
    plain = await start_gateway(directory)
    assert secure.server.tls and not plain.server.tls

    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    st = Station(await open_station(secure.url, "P2", PASSWORD, ssl=client_ctx))
    assert (await st.call("Heartbeat", {}))[0] == 3
    assert secure.observer.connected[0].security_profile == 2
    p1 = Station(await open_station(secure.url, "P1", PASSWORD, ssl=client_ctx))  # profile 1 may use TLS
    assert (await p1.call("Heartbeat", {}))[0] == 3

    with pytest.raises(InvalidStatus) as info:
        await open_station(plain.url, "P2", PASSWORD)
    assert info.value.response.status_code == 401
    await plain.security.wait_for("insecure_transport")

    untrusting = ssl.create_default_context()  # does not know the throwaway CA
    with pytest.raises(ssl.SSLCertVerificationError):
        await open_station(secure.url, "P2", PASSWORD, ssl=untrusting)
