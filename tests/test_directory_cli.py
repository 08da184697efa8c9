"""`plp-gateway directory ...` as an administrator runs it: import with every bad row reported
by line and reason, --dry-run, --replace, list, export (GDPR access), remove-member (erasure)."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.store import SqliteStore
from tests.directory_fixtures import BAD_ROWS, email, member_csv, phone
from tests.test_cli import plp_gateway


def config(tmp_path: Path) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "gw.sqlite3"}"\n')
    return str(path)


def members_listed(cfg: str, plp: str) -> list[str]:
    out = plp_gateway("directory", "list", "--plp", plp, "--config", cfg)
    assert out.returncode == 0, out.stderr
    return [line.split("\t")[0] for line in out.stdout.splitlines()]


def test_import_reports_bad_rows_by_line_then_replace_removes_the_missing(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path)
    csv = tmp_path / "members.csv"
    csv.write_bytes(member_csv())
    out = plp_gateway("directory", "import", str(csv), "--plp", "tilleuls", "--config", cfg)
    assert out.returncode == 1  # some rows were bad
    reported = {line for line in out.stderr.splitlines() if ": line " in line}
    assert len(reported) == 10
    for line, (_, reason) in BAD_ROWS.items():
        assert any(f"line {line}: {reason}" in r for r in reported), (line, reason)
    assert "490 added" in out.stdout
    assert len(members_listed(cfg, "tilleuls")) == 490

    csv.write_bytes(member_csv(bad=False, skip=frozenset(range(300, 330))))
    args = ("directory", "import", str(csv), "--plp", "tilleuls", "--replace", "--config", cfg)
    dry = plp_gateway(*args, "--dry-run")
    assert dry.returncode == 0 and "30 to remove" in dry.stdout, dry.stdout
    assert len(members_listed(cfg, "tilleuls")) == 490  # a dry run writes nothing
    done = plp_gateway(*args)
    assert done.returncode == 0 and "30 removed" in done.stdout, done.stdout
    listed = members_listed(cfg, "tilleuls")
    assert len(listed) == 470 and "m-0310" not in listed and "m-0010" in listed


def test_export_then_remove_member_leaves_nothing_in_the_store_files(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    csv = tmp_path / "members.csv"
    csv.write_bytes(member_csv(20, bad=False))
    assert (
        plp_gateway("directory", "import", str(csv), "--plp", "a", "--config", cfg).returncode == 0
    )
    out = plp_gateway("directory", "export", "--member", "m-0007", "--config", cfg)
    exported = json.loads(out.stdout)
    assert exported[0]["phone"] == phone(7) and exported[0]["email"] == email(7)
    assert exported[0]["no_voice"] is True

    out = plp_gateway("directory", "remove-member", "m-0007", "--config", cfg)
    assert out.returncode == 0, out.stderr
    data = b"".join(p.read_bytes() for p in tmp_path.glob("gw.sqlite3*"))
    assert phone(8).encode() in data
    assert phone(7).encode() not in data and email(7).encode() not in data
    gone = plp_gateway("directory", "export", "--member", "m-0007", "--config", cfg)
    assert gone.returncode == 1


def test_json_import_sets_the_plp_and_set_plp_changes_it(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    data = {
        "plp": {
            "names": {"fr": "PLP Tilleuls", "nl": "BIN Linde"},
            "zone": "5344",
            "code_word": "Tilleul",
            "coordinators": [{"email": "coord@police.example.be"}],
        },
        "members": [
            {"ref": "anne", "phone": "0470 12 34 56", "lang": "nl", "groups": ["shopkeepers"]},
            {"ref": "bert", "email": "not-an-address", "lang": "fr"},
        ],
    }
    path = tmp_path / "tilleuls.json"
    path.write_text(json.dumps(data))
    out = plp_gateway("directory", "import", str(path), "--plp", "tilleuls", "--config", cfg)
    assert out.returncode == 1 and "line 2: invalid_email" in out.stderr, out.stderr
    assert "1 added" in out.stdout
    out = plp_gateway(
        "directory", "set-plp", "tilleuls", "--sender-id", "PLPTilleul",
        "--coordinator-phone", "0470 99 88 77", "--config", cfg,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    listed = plp_gateway("directory", "list", "--config", cfg).stdout
    assert listed.startswith("tilleuls\t1 members\tPLP Tilleuls / BIN Linde\tzone 5344")
    store = SqliteStore(tmp_path / "gw.sqlite3")
    try:
        plp = store.plp("tilleuls")
    finally:
        store.close()
    assert plp is not None and (plp.code_word, plp.sender_id) == ("Tilleul", "PLPTilleul")
    assert [c.phone for c in plp.coordinators] == ["+32470998877"]
