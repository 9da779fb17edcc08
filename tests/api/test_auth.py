"""Operator key, driver tokens and what each one reaches."""

from __future__ import annotations

import hashlib

import asyncpg
import httpx

from tests.api.conftest import OPERATOR, plug_in
from tests.conftest import GatewayHarness


async def test_health_needs_no_auth_and_everything_else_does(api: httpx.AsyncClient) -> None:
    assert (await api.get("/api/v1/health")).status_code == 200
    for path in ("/api/v1/stations", "/api/v1/sessions", "/api/v1/site", "/api/v1/tariff"):
        missing = await api.get(path)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await api.get(path, headers={"Authorization": "Bearer not-the-key"})
        assert wrong.status_code == 401
        basic = await api.get(path, headers={"Authorization": "Basic dGVzdDp0ZXN0"})
        assert basic.status_code == 401
        assert (await api.get(path, headers=OPERATOR)).status_code == 200


async def test_driver_token_sees_only_its_own_sessions(
    gateway_server: GatewayHarness,
    api: httpx.AsyncClient,
    database_url: str,
) -> None:
    alice_st = await plug_in(gateway_server, "CS-A", "tx-alice", "ALICE")
    bob_st = await plug_in(gateway_server, "CS-B", "tx-bob", "BOB")

    issued = await api.post(
        "/api/v1/driver-tokens", headers=OPERATOR, json={"id_token": "ALICE", "label": "app"}
    )
    assert issued.status_code == 201, issued.text
    token = issued.json()["token"]
    alice = {"Authorization": f"Bearer {token}"}

    # Only the token's sha256 is stored.
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        stored = await conn.fetchval(
            "SELECT token_hash FROM driver_tokens WHERE id = $1", issued.json()["id"]
        )
    finally:
        await conn.close()
    assert stored == hashlib.sha256(token.encode()).hexdigest()
    listed = await api.get("/api/v1/driver-tokens", headers=OPERATOR)
    assert token not in listed.text

    mine = await api.get("/api/v1/sessions/tx-alice", headers=alice)
    assert mine.status_code == 200 and mine.json()["id_token"] == "ALICE"
    other = await api.get("/api/v1/sessions/tx-bob", headers=alice)
    absent = await api.get("/api/v1/sessions/tx-nobody", headers=alice)
    # Someone else's session looks exactly like one that does not exist.
    assert other.status_code == absent.status_code == 404
    assert other.json()["error"]["code"] == absent.json()["error"]["code"] == "not_found"
    put_other = await api.put("/api/v1/sessions/tx-bob/preferences", headers=alice, json={"energy_kwh": 5})
    assert put_other.status_code == 404

    listing = await api.get("/api/v1/sessions", headers=alice)
    assert [s["transaction_id"] for s in listing.json()["items"]] == ["tx-alice"]
    everyone = await api.get("/api/v1/sessions", headers=OPERATOR)
    assert {s["transaction_id"] for s in everyone.json()["items"]} == {"tx-alice", "tx-bob"}
    assert (await api.get("/api/v1/sessions/tx-bob", headers=OPERATOR)).status_code == 200

    # A driver token is not an operator key.
    forbidden = await api.get("/api/v1/stations", headers=alice)
    assert forbidden.status_code == 403 and forbidden.json()["error"]["code"] == "forbidden"

    # Revoked: it stops working at once.
    revoked = await api.delete(f"/api/v1/driver-tokens/{issued.json()['id']}", headers=OPERATOR)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"].endswith("Z")
    assert (await api.get("/api/v1/sessions/tx-alice", headers=alice)).status_code == 401
    await alice_st.ws.close()
    await bob_st.ws.close()


async def test_errors_have_one_shape(api: httpx.AsyncClient) -> None:
    unknown_route = await api.get("/api/v1/nothing-here", headers=OPERATOR)
    assert unknown_route.status_code == 404 and set(unknown_route.json()["error"]) == {
        "code",
        "message",
        "details",
    }
    wrong_method = await api.patch("/api/v1/stations", headers=OPERATOR)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    bad = await api.get("/api/v1/stations?limit=0", headers=OPERATOR)
    assert bad.status_code == 422
    err = bad.json()["error"]
    assert err["code"] == "validation_error" and "limit" in err["message"]
    assert err["details"]["errors"][0]["loc"] == ["query", "limit"]


async def test_a_body_that_is_not_json_is_a_400_as_the_openapi_says(api: httpx.AsyncClient) -> None:
    """Every /api/v1 operation lists 400 "The body is not readable JSON"; it answered 422."""
    for body in (b"{not json", b'{"import_kw": 10'):
        r = await api.put("/api/v1/site/limits", headers={**OPERATOR, "Content-Type": "application/json"},
                          content=body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "bad_request" and "not readable JSON" in err["message"]
    rule = await api.put("/api/v1/site/limits", headers=OPERATOR, json={"import_kw": -5, "export_kw": 1})
    assert rule.status_code == 422  # readable JSON against a rule stays a 422


async def test_a_body_over_the_bound_is_a_413_before_anything_parses_it(api: httpx.AsyncClient) -> None:
    """FastAPI parsed a body whole before the bearer check: 80 MB from a caller without a token
    held every station's calls for seconds. Said in Content-Length or streamed, over the bound
    is a 413; under it, the route answers as before."""
    from gateway.api.body_limit import MAX_BODY_BYTES

    big = b'{"import_kw": 10, "export_kw": 1, "x": "' + b"a" * MAX_BODY_BYTES + b'"}'
    for headers in ({}, OPERATOR):
        r = await api.put("/api/v1/site/limits", headers={**headers, "Content-Type": "application/json"},
                          content=big)
        assert r.status_code == 413, r.text
        assert r.json()["error"] == {"code": "payload_too_large", "message": f"the request body is over "
                                     f"{MAX_BODY_BYTES} bytes", "details": {"max_bytes": MAX_BODY_BYTES}}

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    r = await api.put("/api/v1/site/limits", headers={**OPERATOR, "Content-Type": "application/json"},
                      content=chunks())
    assert r.status_code == 413
    streamed_ok = b'{"import_kw": 100, "export_kw": 10}'

    async def small():  # type: ignore[no-untyped-def]
        yield streamed_ok[:10]
        yield streamed_ok[10:]

    r = await api.put("/api/v1/site/limits", headers={**OPERATOR, "Content-Type": "application/json"},
                      content=small())
    assert r.status_code == 200, r.text
