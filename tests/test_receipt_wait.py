"""Receipts that never come (issue 12, finding 21): after `[sms] receipt_wait` a `sent`
SMS no longer keeps its job running; a receipt that comes later still applies."""

from __future__ import annotations

import time

from gateway.domain import DeliveryState, JobState
from gateway.store import SqlStore
from tests.conftest import GatewayFactory
from tests.fixtures import Observer, members
from tests.sms_fixtures import SmscProcess, sms_job
from tests.test_store_batches import claim, job_state, new_job, sent


async def test_a_job_without_receipts_is_done_after_the_receipt_wait(
    gateway: GatewayFactory, observer: Observer, smsc: SmscProcess
) -> None:
    await smsc.ctl("fault", receipts=False)
    gateway(smsc.config(sms={"receipt_wait": 1.0}))
    recipients = members(3)
    await observer.publish_job(sms_job("rw-1", recipients))  # ttl 900 s

    status = await observer.wait_job("rw-1", "done", timeout=30)
    assert status["totals"] == {"sent": 3}, "counted as sent, not delivered"
    assert {e["state"] for e in observer.events("rw-1")} == {"queued", "sending", "sent"}

    # The SMSC's receipt for the first message id arrives late: it still applies.
    await smsc.ctl("receipt", id="1", dest=recipients[0]["phone"])
    await observer.wait(
        lambda: (
            (st := observer.status("rw-1")) is not None
            and st["totals"] == {"sent": 2, "delivered": 1}
        )
    )
    final = observer.status("rw-1")
    assert final is not None and final["state"] == "done"


def test_the_store_ends_a_job_only_when_every_sent_has_waited(any_store: SqlStore) -> None:
    """Store level: pending work, a `sent` still within its wait, or a `sent` on a channel
    without a receipt wait keep the job running."""
    store = any_store
    ids = new_job(store, "j", 3)
    claim(store, ids)
    t0 = time.time()
    sent(store, [(ids[0], ["sim:1"]), (ids[1], ["sim:2"])])  # ids[2] still `sending`
    assert store.finish_receipt_waits({"sms": 1.0}, t0 + 60) == []
    sent(store, [(ids[2], ["sim:3"])])
    assert store.finish_receipt_waits({"sms": 1.0}, time.time()) == []  # within the wait
    assert store.finish_receipt_waits({"email": 1.0}, t0 + 60) == []  # sms waits for receipts
    assert store.finish_receipt_waits({"sms": 1.0}, time.time() + 2) == [("j", 3)]
    assert job_state(store, "j") is JobState.DONE
    assert store.finish_receipt_waits({"sms": 1.0}, time.time() + 2) == []  # once
    # A late receipt still settles its delivery; the job stays done.
    [(known, change)] = store.apply_receipts([("sms", "sim:1", DeliveryState.DELIVERED, None)])
    assert known and change is not None and change.delivery.state is DeliveryState.DELIVERED
    assert job_state(store, "j") is JobState.DONE
    assert store.counts("j") == {"sms": {"delivered": 1, "sent": 2}}
