"""Members' choices with several nodes: a cold message held for a member's quiet hours is in
the shared store like any delivery, claimed and sent once, by one node, when the hold ends."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.directory import Member, Plp
from gateway.store_pg import PostgresStore
from tests.cluster_fixtures import NodeFactory, claimed
from tests.fixtures import Observer
from tests.sms_fixtures import SmscProcess
from tests.test_member_choices import cold_job

HOLD = 10  # seconds from now the members' quiet hours end: the job is in, held, long before


async def test_a_held_cold_message_is_sent_once_by_one_of_two_nodes_when_its_hold_ends(
    node: NodeFactory, observer: Observer, smsc: SmscProcess, pg_url: str
) -> None:
    sms = smsc.config() + '[directory]\nquiet_hours = ""\ncold_daily_cap = 0\n'
    nodes = [node("q1", sms), node("q2", sms)]
    # Each member's own quiet hours began a minute ago and end HOLD seconds from now.
    now = datetime.now(ZoneInfo("Europe/Brussels"))
    window = f"{now - timedelta(minutes=1):%H:%M:%S}-{now + timedelta(seconds=HOLD):%H:%M:%S}"
    people = [
        Member(
            "tilleuls",
            f"q-{i:02d}",
            "fr",
            phone=f"+3247500{i:04d}",
            phone_kind="BE/mobile",
            quiet_hours=window,
        )
        for i in range(20)
    ]
    store = PostgresStore(pg_url)  # the directory, as `directory import` puts it there
    try:
        store.import_members("tilleuls", people, plp=Plp("tilleuls"))
    finally:
        store.close()

    await observer.publish_job(cold_job("held-1"))
    status = await observer.wait_job("held-1", "done", timeout=HOLD + 60)
    assert status["totals"] == {"delivered": 20}
    # Exactly one message each, whichever node sent it.
    assert await smsc.counts() == {p.phone.removeprefix("+"): 1 for p in people if p.phone}
    by_ref: dict[str, list[dict[str, str]]] = {}
    for event in observer.events("held-1"):
        by_ref.setdefault(event["ref"], []).append(event)
    assert len(by_ref) == 20
    for ref, events in by_ref.items():
        states = [e["state"] for e in events]
        assert states[0] == "held" and events[0]["reason"] == "quiet_hours", (ref, states)
        # Sent once, after the hold: one attempt, not before the end of the quiet hours.
        assert Counter(states)["sending"] == 1 and states[-1] == "delivered", (ref, states)
        until = datetime.fromisoformat(events[0]["next_attempt_at"])
        sending = next(e for e in events if e["state"] == "sending")
        assert datetime.fromisoformat(sending["time"]) >= until, (ref, sending, until)
    assert sum(claimed(p) for p in nodes) >= 20
