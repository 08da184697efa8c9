"""Admin commands outside the service: secrets given as systemd credentials
(`file:/run/credentials/plp-gateway.service/...`) exist only inside the service, yet
`check-config`, `status` and `purge` must work in an operator's shell; `run` still refuses."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import GatewayFactory
from tests.fixtures import Observer, SmtpServer, email_job, members
from tests.test_cli import plp_gateway

CREDENTIALS = "/nonexistent/run/credentials/plp-gateway.service"


def with_credentials(config: Path) -> Path:
    """The test gateway's configuration with every secret a credential of the service."""
    text = config.read_text()
    text = text.replace("[mqtt]\n", f'[mqtt]\npassword = "file:{CREDENTIALS}/mqtt-password"\n')
    text = text.replace(
        "[email]\n", f'[email]\nusername = "gw"\npassword = "file:{CREDENTIALS}/smtp-password"\n'
    )
    text += (
        "[[sms.smsc]]\n"
        'name = "smsc1"\nsystem_id = "plp"\n'
        f'password = "file:{CREDENTIALS}/smpp-password"\n'
        "[security.keys]\n"
        f'dispatch-1 = "file:{CREDENTIALS}/dispatch-1.key"\n'
    )
    path = config.with_name("service.toml")
    path.write_text(text)
    return path


async def test_admin_commands_work_where_credentials_are_unreadable(
    gateway: GatewayFactory, observer: Observer, smtp: SmtpServer
) -> None:
    # A job in the store, left by a gateway that could read its (literal) secrets.
    proc = gateway()
    await observer.publish_job(email_job("admin-1", members(2)))
    await observer.wait_job("admin-1", "done")
    assert proc.terminate() == 0
    config = with_credentials(proc.config)

    checked = plp_gateway("check-config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "OK" in checked.stdout
    for key, name in (
        ("mqtt.password", "mqtt-password"),
        ("email.password", "smtp-password"),
        ("sms.smsc.0.password", "smpp-password"),
        ("security.keys.dispatch-1", "dispatch-1.key"),
    ):
        assert (
            f"{config}: {key}: warning: file:{CREDENTIALS}/{name} is readable only inside the "
            "service" in checked.stderr
        ), checked.stderr

    strict = plp_gateway("check-config", "--strict", str(config))
    assert strict.returncode == 2
    assert f"{config}: email.password: Value error, cannot read secret file" in strict.stderr

    status = plp_gateway("status", "admin-1", "--config", str(config))
    assert status.returncode == 0, status.stderr
    assert "admin-1" in status.stdout and "m-00001" in status.stdout

    purge = plp_gateway("purge", "--config", str(config), "--older-than-days", "1")
    assert purge.returncode == 0, purge.stderr
    assert purge.stdout.startswith("purged 0 finished jobs")

    run = plp_gateway("run", "--config", str(config))
    assert run.returncode == 2
    assert (
        f"{config}: mqtt.password: Value error, cannot read secret file "
        f"{CREDENTIALS}/mqtt-password: No such file or directory" in run.stderr
    )
    assert "LoadCredential=" in run.stderr


def test_check_config_still_fails_on_other_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        f'[mqtt]\npassword = "file:{CREDENTIALS}/mqtt-password"\n[store]\nretention_days = -1\n'
    )
    result = plp_gateway("check-config", str(path))
    assert result.returncode == 2
    assert f"{path}: store.retention_days:" in result.stderr
