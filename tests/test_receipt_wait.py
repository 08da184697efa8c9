"""Receipts that never come (issue 12, finding 21): after `[sms] receipt_wait` a `sent`
SMS no longer keeps its job running; a receipt that comes later still applies."""

from __future__ import annotations

from tests.conftest import GatewayFactory
from tests.fixtures import Observer, members
from tests.sms_fixtures import SmscProcess, sms_job


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
        lambda: (st := observer.status("rw-1")) is not None
        and st["totals"] == {"sent": 2, "delivered": 1}
    )
    final = observer.status("rw-1")
    assert final is not None and final["state"] == "done"
