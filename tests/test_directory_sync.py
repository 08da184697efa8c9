"""Directory sync over MQTT from a central database: signed, bound to its PLP's topic, the
result on the reply topic with counts and bad rows by position, never a member's data."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.signing import sign
from gateway.store import SqliteStore
from tests.conftest import GatewayFactory
from tests.fixtures import Observer
from tests.test_signed_cancel import KEY, security

MEMBERS = [
    {"ref": "anne", "phone": "0470 12 34 56", "email": "anne@example.be", "lang": "nl"},
    {"ref": "bert", "phone": "+32 470 65 43 21", "lang": "fr", "groups": ["shopkeepers"]},
    {"ref": "carl", "phone": "12", "lang": "fr"},  # not a number
]


def sync(plp: str, **extra: Any) -> dict[str, Any]:
    return {"plp": plp, "request": "sync-1", "replace": True, "members": MEMBERS, **extra}


def results(observer: Observer, plp: str) -> list[dict[str, Any]]:
    return [m.json() for m in observer.on(f"/directory/{plp}/result")]


async def test_a_signed_sync_imports_and_answers_without_personal_data(
    gateway: GatewayFactory, observer: Observer, tmp_path: Path
) -> None:
    gateway(security(False))
    now = datetime.now(UTC)
    info = {"names": {"nl": "BIN Linde"}, "code_word": "Linde"}
    signed = sign(sync("tilleuls", info=info), "dispatch-1", KEY, now)
    await observer.publish("plp/directory/tilleuls/sync", json.dumps(signed))
    [result] = await observer.wait(lambda: results(observer, "tilleuls"))
    assert result["ok"] and (result["added"], result["removed"]) == (2, 0)
    assert result["request"] == "sync-1"
    assert result["problems"] == [{"item": 3, "reason": "invalid_phone"}]

    # Refused: unsigned, replayed, or signed for another PLP than its topic's.
    await observer.publish("plp/directory/tilleuls/sync", json.dumps(sync("tilleuls")))
    await observer.publish("plp/directory/tilleuls/sync", json.dumps(signed))
    other = sign(sync("chenes"), "dispatch-1", KEY, now)
    await observer.publish("plp/directory/tilleuls/sync", json.dumps(other))
    answers = await observer.wait(
        lambda: len(results(observer, "tilleuls")) >= 4 and results(observer, "tilleuls")
    )
    assert [r["ok"] for r in answers] == [True, False, False, False]
    assert [r["error"] for r in answers[1:]] == ["unsigned", "replayed", "wrong_plp"]

    store = SqliteStore(tmp_path / "gateway.sqlite3")
    try:
        assert [m.ref for m in store.members("tilleuls")] == ["anne", "bert"]
        plp = store.plp("tilleuls")
        assert plp is not None and plp.code_word == "Linde"
    finally:
        store.close()
    published = b"".join(
        m.payload for m in observer.seen if "/directory/" in m.topic and m.topic.endswith("/result")
    )
    for secret in (b"470", b"anne@", b"example.be"):
        assert secret not in published
