"""The library internals the gateway borrows, named: a release that changes one fails here,
with the list of what is gone, instead of somewhere deep in a run.

The adapters (gateway/mqtt_adapter.py, voice/ami_adapter.py) are the only modules that reach
inside aiomqtt/paho and panoramisk; pyproject.toml bounds those versions.
"""

from __future__ import annotations

import ast
from pathlib import Path

from gateway import mqtt_adapter
from voice import ami_adapter

ROOT = Path(__file__).resolve().parent.parent


def test_aiomqtt_and_paho_internals_are_there() -> None:
    missing = mqtt_adapter.missing_internals()
    assert not missing, (
        "aiomqtt/paho changed what gateway/mqtt_adapter.py relies on: "
        + ", ".join(missing)
        + " (update the adapter, then the version bounds in pyproject.toml)"
    )


def test_panoramisk_internals_are_there() -> None:
    missing = ami_adapter.missing_internals()
    assert not missing, (
        "panoramisk changed what voice/ami_adapter.py relies on: "
        + ", ".join(missing)
        + " (update the adapter, then the version bound in pyproject.toml)"
    )


def test_only_the_adapters_reach_inside() -> None:
    """`._client` of an aiomqtt client and panoramisk imports live in the adapters only."""
    offenders = []
    for path in [*ROOT.glob("gateway/*.py"), *ROOT.glob("voice/*.py"), *ROOT.glob("sms/*.py")]:
        if path.name in {"mqtt_adapter.py", "ami_adapter.py"}:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            # `self._client` is a module's own attribute; `x._client` reaches into a library.
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "_client"
                and not (isinstance(node.value, ast.Name) and node.value.id == "self")
            ):
                offenders.append(f"{path.name}:{node.lineno} ._client")
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                )
                if any(n.split(".")[0] == "panoramisk" for n in names):
                    offenders.append(f"{path.name}:{node.lineno} imports panoramisk")
    assert not offenders, offenders


async def test_a_plain_puback_confirms_its_message_through_the_fast_path() -> None:
    import aiomqtt

    client = aiomqtt.Client("localhost")
    mqtt_adapter.fast_pubacks(client)
    inner = client._client
    seen: list[object] = []
    inner.on_publish = lambda *args: seen.append(args[3])
    infos = [mqtt_adapter.publish(client, f"t/{i}", b"x", 1, False) for i in range(3)]
    mids = [info.mid for info in infos]  # queued while not connected, as after a reconnect
    assert list(inner._out_messages) == mids
    inner._in_packet["packet"] = bytearray(mids[1].to_bytes(2, "big"))
    inner._handle_pubackcomp("PUBACK")
    assert list(inner._out_messages) == [mids[0], mids[2]]
    inner._in_packet["packet"] = bytearray(b"\xff\xff")  # no such message: nothing happens
    inner._handle_pubackcomp("PUBACK")
    inner._in_packet["packet"] = bytearray(mids[0].to_bytes(2, "big"))
    inner._handle_pubackcomp("PUBACK")
    assert list(inner._out_messages) == [mids[2]]
    assert [str(code) for code in seen] == ["Success", "Success"]
    assert seen[0] is seen[1]  # the shared code: paho's own handler makes one per PUBACK
