"""Deterministic train/validation/test assignment by a hash of the record id.

A record's split depends only on its id and the salt, never on file order or corpus size, so a
growing corpus keeps every old record where it was, and an augmented copy (which carries its
source id) can never land in an evaluation split.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation", "test")


def hash_unit(key: str, salt: str) -> float:
    """A uniform number in [0, 1) from ``salt`` and ``key``."""
    digest = hashlib.blake2b(f"{salt}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of(record_id: str, salt: str, validation_share: float, test_share: float) -> str:
    u = hash_unit(record_id, salt)
    if u < test_share:
        return "test"
    if u < test_share + validation_share:
        return "validation"
    return "train"
