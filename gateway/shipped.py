"""Files of this repository that the wheel carries as package data, and where
`plp-gateway init DIR` writes them.

setup.py reads this module at build time, without importing the package: standard library only.
"""

# Path written under DIR -> the original in the repository (one copy in git; the build copies
# it into the wheel under gateway/_shipped/<original path>).
SHIPPED: dict[str, str] = {
    "gateway.toml": "configs/gateway.example.toml",
    "asterisk/plp-alert.conf": "configs/asterisk/extensions.conf",
    "asterisk/manager.conf": "configs/asterisk/manager.conf",
    "mosquitto/plp.conf": "configs/mosquitto/plp.conf",
    "mosquitto/acl": "configs/mosquitto/acl",
    "systemd/plp-gateway.service": "systemd/plp-gateway.service",
    "systemd/plp-gateway.sysusers": "systemd/plp-gateway.sysusers",
}

# Inside the installed package.
PACKAGE_DIR = "_shipped"
