"""SMS over SMPP 3.4 (filled by the SMS issue)."""
