"""Security profiles 2 (Basic auth over TLS) and 3 (TLS client certificates), with throwaway CAs (trustme)."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme
from websockets.exceptions import InvalidMessage, InvalidStatus

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


def _client_ctx(ca: trustme.CA, leaf: trustme.LeafCert | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if leaf is not None:
        leaf.configure_cert(ctx)
    return ctx


async def test_profile3_station_logs_in_with_its_certificate_and_nothing_else_does(
    start_gateway: StartGateway, tls_files: tuple[trustme.CA, Path, Path], tmp_path: Path
) -> None:
    # docs/reliability.md S3: a station CA; its certificate for P3 is the only way in for P3.
    server_ca, cert_path, key_path = tls_files
    station_ca, foreign_ca = trustme.CA(), trustme.CA()
    ca_file = tmp_path / "stations-ca.pem"
    station_ca.cert_pem.write_to_path(str(ca_file))
    directory = MemoryDirectory()
    directory.add("P3", None, profile=3)
    directory.add("P2", PASSWORD, password_hash=PASSWORD_HASH, profile=2)
    gw = await start_gateway(directory, scheme="wss", tls_cert=cert_path, tls_key=key_path, tls_client_ca=ca_file)

    st = Station(await open_station(gw.url, "P3", None, ssl=_client_ctx(server_ca, station_ca.issue_cert(
        "p3.example", common_name="P3"))))
    assert (await st.call("Heartbeat", {}))[0] == 3
    assert gw.observer.connected[0].security_profile == 3
    # Profile 2 on the same port: no certificate, Basic auth as before.
    p2 = Station(await open_station(gw.url, "P2", PASSWORD, ssl=_client_ctx(server_ca, None)))
    assert (await p2.call("Heartbeat", {}))[0] == 3

    # Refused in the HTTP handshake, each a security event: no certificate (a password does not
    # stand in for it), and a valid certificate of another station.
    with pytest.raises(InvalidStatus) as info:
        await open_station(gw.url, "P3", PASSWORD, ssl=_client_ctx(server_ca, None))
    assert info.value.response.status_code == 401
    await gw.security.wait_for("client_certificate_required")
    with pytest.raises(InvalidStatus) as info:
        await open_station(gw.url, "P3", None, ssl=_client_ctx(server_ca, station_ca.issue_cert(
            "other.example", common_name="P4")))
    assert info.value.response.status_code == 401
    await gw.security.wait_for("certificate_id_mismatch")

    # Refused by TLS itself, each a security event with TLS's reason: a certificate another CA
    # signed, and an expired one.
    expired = station_ca.issue_cert("p3.example", common_name="P3", not_before=datetime(2020, 1, 1, tzinfo=UTC),
                                    not_after=datetime(2021, 1, 1, tzinfo=UTC))
    refusals = ((foreign_ca.issue_cert("p3.example", common_name="P3"), "unable to get local issuer certificate"),
                (expired, "certificate has expired"))
    for n, (leaf, reason) in enumerate(refusals, start=1):
        with pytest.raises((ssl.SSLError, ConnectionError, InvalidMessage)):
            await open_station(gw.url, "P3", None, ssl=_client_ctx(server_ca, leaf))
        events = await gw.security.wait_for("client_certificate_refused", count=n)
        assert events[-1].detail == f"TLS refused a client certificate: {reason}"
        assert events[-1].station_id is None
    assert len(gw.observer.connected) == 2  # only the two good ones ever got in
    assert (await st.call("Heartbeat", {}))[0] == 3  # and the first is untouched


async def test_profile3_without_a_station_ca_is_refused(
    start_gateway: StartGateway, tls_files: tuple[trustme.CA, Path, Path]
) -> None:
    server_ca, cert_path, key_path = tls_files
    directory = MemoryDirectory()
    directory.add("P3", None, profile=3)
    gw = await start_gateway(directory, scheme="wss", tls_cert=cert_path, tls_key=key_path)
    with pytest.raises(InvalidStatus) as info:
        await open_station(gw.url, "P3", None, ssl=_client_ctx(server_ca, None))
    assert info.value.response.status_code == 401
    await gw.security.wait_for("client_certificate_required")
