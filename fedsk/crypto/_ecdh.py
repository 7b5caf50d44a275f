"""Commutative hashing on X25519 for private set intersection (the `cryptography` library).

Scalar multiplication by a party's secret key commutes: ``b * (a * P) == a * (b * P)``.
Points are X25519 u-coordinates (32 bytes); an ID is hashed to one with SHA-256.
"""

import hashlib

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from ._parallel import parallel_chunks

__all__ = ["ecdh_key", "hash_to_points", "multiply_points"]


def ecdh_key():
    """A fresh secret scalar (an X25519 private key), one per party per run."""
    return X25519PrivateKey.generate()


def hash_to_points(messages, prefix):
    """SHA-256 of ``prefix + m`` for each byte string: uint8 array (n, 32)."""
    out = b"".join(hashlib.sha256(prefix + m).digest() for m in messages)
    return np.frombuffer(out, dtype=np.uint8).reshape(-1, 32)


def _multiply_chunk(points, private_raw):
    key = X25519PrivateKey.from_private_bytes(private_raw)
    out = bytearray()
    for row in points:
        try:
            out += key.exchange(X25519PublicKey.from_public_bytes(row.tobytes()))
        except ValueError:
            raise ValueError("a point is of low order") from None
    return np.frombuffer(bytes(out), dtype=np.uint8).reshape(-1, 32)


def multiply_points(points, private_key, *, n_jobs=None, min_points=256):
    """Multiply every 32-byte u-coordinate by the secret scalar of ``private_key``.

    Below ``min_points`` points the work stays in this process (worker processes cost
    more than they save: about 100 points break even on the persistent workers); work
    done in the background passes 0, since the scalar multiplications hold the GIL.
    Raises ValueError for a low-order point (a peer's malformed input).
    """
    raw = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    points = np.ascontiguousarray(points, dtype=np.uint8).reshape(-1, 32)
    parts = parallel_chunks(
        _multiply_chunk,
        len(points),
        lambda a, b: (points[a:b], raw),
        n_jobs=n_jobs,
        ops_per_item=6,
        min_ops=6 * min_points,
    )
    return np.concatenate(parts) if parts else np.empty((0, 32), np.uint8)
