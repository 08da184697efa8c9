"""A mosquitto with TLS, client certificates (their CN is the user name) and the example ACL
(configs/mosquitto/), started from the example configuration with only paths and port replaced.

Throwaway PKI made with the openssl command: a CA, a server certificate for 127.0.0.1 and
localhost, and one client certificate per user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gateway.simulator_process import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "configs" / "mosquitto"
USERS = (
    "gateway",
    "dispatch",
    "monitoring",
    "directory-sync",
    "stranger",
)  # stranger: valid login, no ACL entry


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    cert: Path
    key: Path


@dataclass
class TlsBroker:
    host: str
    port: int
    ca: Path
    users: dict[str, Credentials]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def tls_context(self, user: str | None = None, trust_ca: bool = True) -> ssl.SSLContext:
        """A client context trusting our CA, with `user`'s certificate when given."""
        ctx = ssl.create_default_context(cafile=str(self.ca) if trust_ca else None)
        if user is not None:
            creds = self.users[user]
            ctx.load_cert_chain(str(creds.cert), str(creds.key))
        return ctx

    def log(self) -> str:
        return (self.workdir / "mosquitto.log").read_text(errors="replace")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(workdir: Path, users: tuple[str, ...] = USERS) -> dict[str, Path]:
    """CA, server and client certificates (EC P-256, valid 2 days) under `workdir`."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=plp-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=workdir,
    )  # fmt: skip
    names = {"server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"}
    names.update({u: "extendedKeyUsage=clientAuth" for u in users})
    paths = {"ca": workdir / "ca.crt"}
    for name, ext in names.items():
        (workdir / f"{name}.ext").write_text(ext + "\n")
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=workdir)  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext",
            cwd=workdir,
        )  # fmt: skip
        paths[name] = workdir / f"{name}.crt"
    return paths


def broker_config(workdir: Path, port: int) -> str:
    """configs/mosquitto/plp.conf with this test's paths and port; every override must hit."""
    overrides = {
        "acl_file": str(workdir / "acl"),
        "listener": f"{port} 127.0.0.1",
        "cafile": str(workdir / "ca.crt"),
        "certfile": str(workdir / "server.crt"),
        "keyfile": str(workdir / "server.key"),
    }
    lines, seen = [], set()
    for line in (EXAMPLE / "plp.conf").read_text().splitlines():
        key = line.split(" ", 1)[0]
        if key in overrides:
            seen.add(key)
            lines.append(f"{key} {overrides[key]}")
        else:
            lines.append(line)
    missing = set(overrides) - seen
    assert not missing, f"configs/mosquitto/plp.conf lost {missing}"
    # Run as the test's user (as root, mosquitto would switch to `mosquitto`, which cannot
    # read the test's private files).
    lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
    lines += ["persistence false", f"log_dest file {workdir / 'mosquitto.log'}", "log_type all"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def tls_broker(workdir: Path, users: tuple[str, ...] = USERS) -> Iterator[TlsBroker]:
    """Start the example broker on a free port; stop it on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    make_pki(workdir, users)
    shutil.copy(EXAMPLE / "acl", workdir / "acl")
    # The broker ignores passwords (the certificate names the user); clients send one anyway,
    # as deployed gateways configured for a password file do.
    creds = {
        user: Credentials(
            user, secrets.token_urlsafe(12), workdir / f"{user}.crt", workdir / f"{user}.key"
        )
        for user in users
    }
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(broker_config(workdir, port))
    broker = TlsBroker("127.0.0.1", port, workdir / "ca.crt", creds, workdir)
    broker.proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        try:
            wait_port(port)
        except TimeoutError:
            broker.proc.kill()
            _, err = broker.proc.communicate(timeout=10)
            raise RuntimeError(f"mosquitto did not start: {err.decode(errors='replace')}") from None
        yield broker
    finally:
        if broker.proc.poll() is None:
            broker.proc.terminate()
            try:
                broker.proc.wait(10)
            except subprocess.TimeoutExpired:
                broker.proc.kill()
                broker.proc.wait(10)
        if broker.proc.stderr is not None:
            broker.proc.stderr.close()
