"""Masks as text: a boolean mask <-> the ``"0101"`` string of the ``mask`` column in the CSV tables.

Bit i of the string is bit i of the chromosome (``ChromosomeLayout``): ``"1"`` keeps the unit, ``"0"``
prunes it. Reading such a column back with pandas needs ``dtype={"mask": str}`` (the catalog's
``load_args``), or leading zeros are lost.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def encode_masks(masks: np.ndarray) -> list[str]:
    """(K, num_bits) bool -> K strings of ``"0"`` / ``"1"``."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 2:
        raise ValueError(f"masks must be a (K, num_bits) array, got shape {masks.shape}")
    return ["".join("1" if bit else "0" for bit in row) for row in masks]


def decode_masks(strings: Iterable[str], num_bits: int | None = None) -> np.ndarray:
    """K strings of ``"0"`` / ``"1"`` -> (K, num_bits) bool; ``num_bits``, when given, is checked (and
    sets the width of an empty result)."""
    strings = list(strings)
    bad = [s for s in strings if not isinstance(s, str)]
    if bad:
        raise TypeError(
            f"masks must be strings of 0 and 1, got {type(bad[0]).__name__} {bad[0]!r}: read the CSV column "
            "with dtype={'mask': str} (the catalog's load_args) so that leading zeros stay"
        )
    lengths = {len(s) for s in strings}
    if num_bits is not None and lengths - {num_bits}:
        raise ValueError(f"masks must have {num_bits} bits, got lengths {sorted(lengths)}")
    if len(lengths) > 1:
        raise ValueError(f"masks differ in length: {sorted(lengths)}")
    invalid = sorted({c for s in strings for c in s} - {"0", "1"})
    if invalid:
        raise ValueError(f"masks may only hold '0' and '1', got {invalid}")
    width = lengths.pop() if lengths else (num_bits or 0)
    out = np.zeros((len(strings), width), dtype=bool)
    for i, s in enumerate(strings):
        out[i] = np.frombuffer(s.encode("ascii"), dtype=np.uint8) == ord("1")
    return out
