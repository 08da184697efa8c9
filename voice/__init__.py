"""Voice: text-to-speech and calls through Asterisk AMI (filled by the voice issues)."""
