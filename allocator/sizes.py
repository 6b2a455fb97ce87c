"""Parse and format byte sizes ("64MiB", "1GiB", "4096")."""

import re

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000**2,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1000**3, "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}


def parse_size(text: str | int) -> int:
    """Bytes in `text`: an integer with an optional unit (B, KiB, MiB, GiB, TiB, KB, MB, GB)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use bytes or a unit such as 64MiB, 16GiB)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def format_size(n: int) -> str:
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f and n % (f // 16 or 1) == 0 or n >= 10 * f:
            return f"{n / f:.4g} {unit}"
    return f"{n} B"
