"""The store's side of several nodes (gateway.store_cluster), on PostgreSQL: the same job id
stored by two nodes at once is a clean duplicate; claims never overlap, hot before cold; a
dead node's claims are taken over and the node is fenced."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest

from gateway.config import JobsConfig, MqttProtocol, parse_config
from gateway.domain import DeliveryState, Priority
from gateway.errors import ConfigError
from gateway.jobs import content_hash, parse_job
from gateway.rows import AddResult, Change
from gateway.store import SqlStore
from gateway.store_pg import PostgresStore
from tests.fixtures import email_job, members

EMAIL = frozenset({"email"})


def add(store: SqlStore, job_id: str, n: int, **extra: object) -> tuple[AddResult, list[int]]:
    payload = json.dumps(email_job(job_id, members(n), **extra)).encode()
    job, _ = parse_job(payload, JobsConfig(), EMAIL)
    result, rows = store.add_job(job, content_hash(payload), EMAIL)
    return result, [r.id for r in rows]


def test_the_same_id_stored_by_two_nodes_at_once_is_a_clean_duplicate(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    payload = json.dumps(email_job("race-1", members(3))).encode()
    job, _ = parse_job(payload, JobsConfig(), EMAIL)
    # The other node's insert, not committed yet: this node's insert must wait for it.
    other = psycopg.connect(pg_url)
    other.execute(
        "INSERT INTO jobs(id, content_hash, priority, test, state, body, created_at,"
        " updated_at, expires_at) VALUES ('race-1', %s, 0, 0, 'accepted', '{}', 1, 1, %s)",
        (content_hash(payload), time.time() + 600),
    )
    results: list[object] = []
    thread = threading.Thread(
        target=lambda: results.append(store.add_job(job, content_hash(payload), EMAIL))
    )
    thread.start()
    thread.join(0.5)
    assert thread.is_alive()  # waiting on the other node's row, not failing
    other.commit()
    thread.join(30)
    other.close()
    assert results == [(AddResult.DUPLICATE, [])]
    store.close()


def test_claims_of_two_nodes_never_overlap_and_take_hot_before_cold(pg_url: str) -> None:
    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    a.heartbeat("a", "boot-a", 15)
    b.heartbeat("b", "boot-b", 15)
    _, cold = add(a, "cold-1", 30, priority="cold")
    _, hot = add(a, "hot-1", 10, priority="hot")
    first = a.claim_due("boot-a", "email", 15)
    assert [p for _, p in first[:10]] == [Priority.HOT] * 10  # the hot job's first
    second = b.claim_due("boot-b", "email", 100)
    ids_a = {r.id for r, _ in first}
    ids_b = {r.id for r, _ in second}
    assert not ids_a & ids_b and ids_a | ids_b == set(cold) | set(hot)
    # A claimed delivery is attempted only by the node that holds it.
    did = next(iter(ids_a))
    assert b.claim_batch([((did, "boot-b"), {})]) == [None]
    assert isinstance(a.claim_batch([((did, "boot-a"), {})])[0], Change)
    a.close()
    b.close()


def test_a_dead_nodes_claims_are_taken_over_and_it_is_fenced(pg_url: str) -> None:
    a, b = PostgresStore(pg_url), PostgresStore(pg_url)
    now = time.time()
    a.heartbeat("a", "boot-a", 3, now=now)
    b.heartbeat("b", "boot-b", 3, now=now)
    _, ids = add(a, "take-1", 4)
    held = [r.id for r, _ in a.claim_due("boot-a", "email", 4)]
    in_flight = a.claim_batch([((held[0], "boot-a"), {})])[0]
    assert isinstance(in_flight, Change)
    assert b.reap_dead(now=now + 1).nodes == []  # a's lease still runs: nothing moves
    b.heartbeat("b", "boot-b", 3, now=now + 4)
    taken_over = b.reap_dead(now=now + 4)  # a's lease ran out
    assert taken_over.nodes == ["a"] and taken_over.freed == 3
    reaped = taken_over.in_flight
    assert [r.id for r in reaped] == [held[0]]
    assert reaped[0].state is DeliveryState.RETRYING and reaped[0].possibly_sent
    assert reaped[0].last_error == "interrupted"
    # a wakes up: what it held is no longer its own.
    assert a.claim_batch([((held[1], "boot-a"), {})]) == [None]
    taken = {r.id for r, _ in b.claim_due("boot-b", "email", 10, now=now + 4)}
    assert taken == set(ids)
    by_node = {n.node: n for n in b.nodes()}
    assert by_node["b"].held == {"queued": 3, "retrying": 1}
    assert not by_node["a"].live(now + 4) and by_node["a"].held == {}
    a.close()
    b.close()


def test_a_receipt_kept_as_orphan_while_its_submit_was_being_recorded_applies(
    any_store: SqlStore,
) -> None:
    # Node B stored the receipt as an orphan while node A's record of the submit was not
    # committed: neither saw the other. The sweep of orphans applies it.
    _, ids = add(any_store, "orphan-1", 1)
    assert isinstance(any_store.claim_batch([((ids[0],), {})])[0], Change)
    any_store.record_sent_batch([((ids[0], DeliveryState.SENT, "email", ["pid-1"], None), {})])
    any_store.atomically(
        lambda: any_store._db.execute(
            "INSERT INTO orphan_receipts VALUES ('email', 'pid-1', 'delivered', NULL, ?)",
            (time.time(),),
        )
    )
    changes = any_store.match_orphan_receipts()
    assert [c.delivery.state for c in changes] == [DeliveryState.DELIVERED]
    assert changes[0].job_finished is not None
    assert any_store.match_orphan_receipts() == []


def test_several_nodes_need_a_shared_store() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"mqtt": {"shared_group": "plp-nodes"}})
    assert "needs a PostgreSQL [store] url" in str(exc.value.problems)
    config = parse_config(
        {"mqtt": {"shared_group": "plp-nodes"}, "store": {"url": "postgresql://h/db"}}
    )
    assert config.clustered and config.cluster.lease == 15.0


def test_several_nodes_speak_mqtt_5_and_each_node_needs_its_own_client_id() -> None:
    store = {"url": "postgresql://h/db"}
    one = parse_config({"node": "gw1"})
    assert one.mqtt.version is MqttProtocol.V311  # one node: as before
    nodes = parse_config({"node": "gw1", "mqtt": {"shared_group": "g"}, "store": store})
    assert nodes.mqtt.version is MqttProtocol.V5
    assert nodes.mqtt.session_expiry == 0xFFFFFFFF  # never: nothing queued for a node is lost
    told = parse_config({"mqtt": {"protocol": "5", "session_expiry": 86400}})
    assert told.mqtt.version is MqttProtocol.V5 and told.mqtt.session_expiry == 86400
    with pytest.raises(ConfigError) as exc:
        parse_config({"mqtt": {"session_expiry": 0}})  # 0 would end the session at once
    assert [key for _, key, _ in exc.value.problems] == ["mqtt.session_expiry"]
    # The same configuration on every node: a fixed client id would be all of theirs.
    with pytest.raises(ConfigError) as exc:
        parse_config(
            {"node": "gw1", "mqtt": {"shared_group": "g", "client_id": "plp"}, "store": store}
        )
    assert "must contain the node's name 'gw1'" in str(exc.value.problems)
    mine = {"shared_group": "g", "client_id": "police-gw1"}
    assert parse_config({"node": "gw1", "mqtt": mine, "store": store}).client_id == "police-gw1"
