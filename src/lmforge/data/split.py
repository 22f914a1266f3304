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
    return SPLITS[split_code(hash_unit(record_id, salt), validation_share, test_share)]


def split_code(u: float, validation_share: float, test_share: float) -> int:
    """The index into ``SPLITS`` of the record whose ``hash_unit`` is ``u``."""
    if u < test_share:
        return 2
    if u < test_share + validation_share:
        return 1
    return 0


def split_codes(ids: list[bytes], salt: str, validation_share: float, test_share: float) -> list:
    """``split_code`` of each id (ASCII bytes): ``split_of`` for a batch, the hash inlined."""
    prefix, blake2b, from_bytes = f"{salt}\x1f".encode(), hashlib.blake2b, int.from_bytes
    test, validation = test_share, test_share + validation_share
    codes = []
    for key in ids:
        u = from_bytes(blake2b(prefix + key, digest_size=8).digest(), "big") / 2**64
        codes.append(2 if u < test else 1 if u < validation else 0)
    return codes
