"""Several nodes on one broker: each keeps its own connections (no node's client id closes
another's), one job status that only moves forward whichever node did the work, and each
node's availability and health its own, also when another node dies."""

from __future__ import annotations

from tests.cluster_fixtures import NodeFactory, claimed
from tests.fixtures import Mosquitto, Observer, SmtpServer, email_job, members
from tests.test_cluster import assert_status_moves_forward


async def test_each_node_keeps_its_own_status_connection_availability_and_health(
    node: NodeFactory, observer: Observer, smtp: SmtpServer, broker: Mosquitto
) -> None:
    smtp.script.delay = 0.01  # 400 mails at concurrency 4: long enough for both to claim
    a, b = node("a"), node("b")
    await observer.publish_job(email_job("own-1", members(400)))
    status = await observer.wait_job("own-1", "done", timeout=90)
    assert status["totals"] == {"delivered": 400}
    assert claimed(a) > 0 and claimed(b) > 0, "both nodes took part"

    # Each node's status connection has its own client id: one connection each, never closed
    # by the other node's (the broker would log the takeover, the gateway a link down).
    for name, proc in (("a", a), ("b", b)):
        status_id = f"plp-gateway-{name}-status"
        assert [c.protocol for c in broker.connections() if c.client_id == status_id] == ["5"]
        assert broker.taken_over(status_id) == 0
        assert broker.taken_over(f"plp-gateway-{name}") == 0
        assert proc.log().count(f"status connection up as {status_id}") == 1
        assert "MQTT link down" not in proc.log()
    # One truth: one node publishes the jobs' statuses from the store's counts, so the
    # retained status never goes back to a node's partial count.
    publishing = [p for p in (a, b) if "cluster: publishing the jobs' statuses" in p.log()]
    assert publishing == [a]
    assert_status_moves_forward(observer, "own-1")

    # Each node's availability and health are its own ...
    def health(name: str) -> list[dict[str, object]]:
        return [s.json() for s in observer.on(f"/gateway/{name}/health")]

    await observer.wait(lambda: health("a") and health("b"))
    boots = {name: health(name)[-1]["boot_id"] for name in ("a", "b")}
    assert boots["a"] != boots["b"]
    for name in ("a", "b"):
        assert {h["node"] for h in health(name)} == {name}
        assert {h["boot_id"] for h in health(name)} == {boots[name]}
        assert health(name)[-1]["state"] == "ready"
        assert [s.payload for s in observer.on(f"/gateway/{name}/availability")] == [b"online"]

    # ... also when the other dies: b's wills mark b offline, a stays online and ready.
    before = len(a.log())
    b.kill()
    await observer.wait(
        lambda: (
            observer.on("/gateway/b/availability")[-1].payload == b"offline"
            and health("b")[-1]["state"] == "offline"
        )
    )
    # a noticed (b's lease ran out) and went on: its own topics untouched.
    await observer.wait(lambda: "cluster: 1 live nodes" in a.log()[before:])
    assert health("b")[-1]["boot_id"] == boots["b"]
    assert [s.payload for s in observer.on("/gateway/a/availability")] == [b"online"]
    assert {h["boot_id"] for h in health("a")} == {boots["a"]}
    assert health("a")[-1]["state"] == "ready"
