"""plp-alert-gateway: MQTT alert jobs to e-mail, SMS and voice calls for Belgian PLPs."""

__version__ = "0.1.0"
