"""Homeopathic potencies: the legal written forms per scale, and the potency's structured parts.

Legal forms (uppercase, as on labels; anything else is refused with a hint):

| scale | written | range | structured (scale, value) |
|---|---|---|---|
| X (decimal, 1:10) | ``6X``, also ``6D`` | 1–1000 | (X, 6) |
| C (centesimal, 1:100) | ``30C``, also ``30CH`` | 1–999 (1000C is written ``1M``) | (C, 30) |
| M (thousands of C) | ``1M``, ``10M``, ``50M``, ``CM`` (=100M), ``MM`` (=1000M) | those five | (M, 1/10/50/100/1000) |
| LM (fifty-millesimal) | ``LM1``, also ``Q1`` | 1–30 | (LM, 1) |
| MT (mother tincture) | ``MT`` or ``Ø`` | – | (MT, none) |

So ``7M`` (no such M potency), ``LM35`` (beyond LM30), ``35LM`` (LM is written before the number),
``0C``, ``1000C``, ``30c`` are refused.
"""

from __future__ import annotations

import re

_X = re.compile(r"^([1-9][0-9]{0,3})(X|D)$")
_C = re.compile(r"^([1-9][0-9]{0,3})(C|CH)$")
_M = re.compile(r"^([0-9]+|C|M)M$")
_LM = re.compile(r"^(LM|Q)([0-9]+)$")
_M_VALUES = {"1": 1, "10": 10, "50": 50, "C": 100, "M": 1000}
SCALES = ("X", "C", "M", "LM", "MT")


class BadPotency(ValueError):
    """The written potency is not a legal form; the message says what is."""


def parse_potency(text: str) -> tuple[str, int | None]:
    """``"30C"`` → ``("C", 30)``; ``"CM"`` → ``("M", 100)``; ``"MT"`` → ``("MT", None)``."""
    if text in ("MT", "Ø"):
        return "MT", None
    if m := _X.match(text):
        n = int(m.group(1))
        if n > 1000:
            raise BadPotency(f"potency '{text}': decimal (X/D) potencies go from 1X to 1000X")
        return "X", n
    if m := _C.match(text):
        n = int(m.group(1))
        if n > 999:
            raise BadPotency(f"potency '{text}': centesimal potencies go from 1C to 999C; 1000C and above are written 1M, 10M, 50M, CM, MM")
        return "C", n
    if m := _M.match(text):
        if m.group(1) not in _M_VALUES:
            raise BadPotency(f"potency '{text}' is not on the M scale: M potencies are 1M, 10M, 50M, CM and MM")
        return "M", _M_VALUES[m.group(1)]
    if m := _LM.match(text):
        n = int(m.group(2))
        if not 1 <= n <= 30 or m.group(2).startswith("0"):
            raise BadPotency(f"potency '{text}': LM (Q) potencies go from LM1 to LM30")
        return "LM", n
    if re.match(r"^[0-9]+(LM|Q)$", text):
        raise BadPotency(f"potency '{text}': LM (Q) potencies are written with the scale first, e.g. LM1 or Q1")
    if text.upper() != text and _legal(text.upper()):
        raise BadPotency(f"potency '{text}': write the scale in capitals (e.g. {text.upper()})")
    raise BadPotency(
        f"potency '{text}' is not a homeopathic potency: <n>X or <n>D (1-1000), <n>C or <n>CH (1-999), "
        "1M, 10M, 50M, CM, MM, LM<n> or Q<n> (1-30), MT or Ø"
    )


def _legal(text: str) -> bool:
    try:
        parse_potency(text)
    except BadPotency:
        return False
    return True
