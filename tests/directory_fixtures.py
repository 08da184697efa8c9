"""Member lists for the directory tests: a 500-row CSV with 10 bad rows, each bad its own way."""

from __future__ import annotations

LANGS = ("fr", "nl", "de", "en")

#: line -> (the row, the reason it is refused). Line 1 is the header.
BAD_ROWS: dict[int, tuple[str, str]] = {
    12: ("bad-01,0470 12 34,,fr,,no", "invalid_phone"),
    57: ("bad-02,,not-an-address,nl,,no", "invalid_email"),
    98: ("bad-03,0470 99 00 03,,xx,,no", "unknown_language"),
    140: ("bad-04,0470 99 00 04,,fr,,maybe", "invalid_no_voice"),
    201: (",0470 99 00 05,,fr,,no", "missing_ref"),
    260: ("m-0003,0470 99 00 06,,fr,,no", "duplicate_ref"),
    333: ("bad-07,,,fr,,no", "no_address"),
    390: ("bad 08,0470 99 00 08,,fr,,no", "invalid_ref"),
    444: ("bad-09,0470 99 00 09,,fr,Shop Keepers!,no", "invalid_group"),
    499: ("bad-10,0470 99 00 10,,fr,,no,25:00-07:00", "invalid_quiet_hours"),
}


def phone(i: int) -> str:
    return f"+3247{i:07d}"


def email(i: int) -> str:
    return f"member{i}@example.be"


def good_row(i: int) -> str:
    groups = "shopkeepers;farmers" if i % 5 == 0 else ("shopkeepers" if i % 2 else "")
    no_voice = "yes" if i % 7 == 0 else "no"
    return f"m-{i:04d},{phone(i)},{email(i)},{LANGS[i % 4]},{groups},{no_voice},"


def member_csv(rows: int = 500, bad: bool = True, skip: frozenset[int] = frozenset()) -> bytes:
    """`rows` data rows (lines 2..rows+1); with `bad`, BAD_ROWS replace some good ones.
    Good member i is on line i + 2 (unless replaced); `skip` leaves good members out."""
    lines = ["ref,phone,email,lang,groups,no_voice,quiet_hours"]
    for i in range(rows):
        line = i + 2
        if bad and line in BAD_ROWS:
            lines.append(BAD_ROWS[line][0])
        elif i not in skip:
            lines.append(good_row(i))
    return ("\n".join(lines) + "\n").encode()
