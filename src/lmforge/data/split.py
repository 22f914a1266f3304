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


def split_codes(ids: list[bytes], salt: str, validation_share: float, test_share: float):
    """``split_code`` of each id (ASCII bytes), an int8 numpy array: ``split_of`` for a batch,
    the hashes taken in one pass and compared all at once (``hash_unit``'s float, by numpy)."""
    import numpy as np

    prefix, blake2b = f"{salt}\x1f".encode(), hashlib.blake2b
    digests = b"".join([blake2b(prefix + key, digest_size=8).digest() for key in ids])
    u = np.frombuffer(digests, ">u8").astype(np.float64) / 2**64
    test, validation = test_share, test_share + validation_share
    return np.where(u < test, 2, np.where(u < validation, 1, 0)).astype(np.int8)
