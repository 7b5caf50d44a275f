"""Paillier encryption for fedsk: phe's keys, vectorised gmpy2 arithmetic, packing.

The only package in fedsk that imports ``phe`` or ``gmpy2``.

>>> from fedsk.crypto import generate_keypair, encrypt, decrypt
>>> pub, priv = generate_keypair(1024)
>>> a = encrypt(pub, [0.5, -1.25, 3.0])
>>> b = encrypt(priv, [1.0, 1.0, 1.0])          # key owner: CRT fast path
>>> decrypt(priv, a + b).tolist()
[1.5, -0.25, 4.0]
>>> decrypt(priv, a.dot([[1.0, 0.0], [2.0, 1.0], [0.0, 1.0]])).tolist()
[-2.0, 1.75]
"""

from ._ahead import ObfuscatorStock
from ._array import (
    EncryptedArray,
    decrypt,
    decrypt_integers,
    decrypt_raw,
    encrypt,
    encrypt_integers,
    packed_histograms,
    prepare_encryption,
)
from ._counting import count_ops
from ._encoding import BASE, DEFAULT_EXPONENT, decode, encode
from ._keys import (
    DEFAULT_KEY_LENGTH,
    MIN_KEY_LENGTH,
    PaillierPrivateKey,
    PaillierPublicKey,
    generate_keypair,
    security_bits,
    short_exponent_bits,
)
from ._masking import MARGIN_BITS, Masks, residues_from_bytes, residues_to_bytes
from ._packing import RecordLayout, pack_signed, unpack_signed

__all__ = [
    "BASE",
    "DEFAULT_EXPONENT",
    "DEFAULT_KEY_LENGTH",
    "MARGIN_BITS",
    "MIN_KEY_LENGTH",
    "EncryptedArray",
    "Masks",
    "ObfuscatorStock",
    "PaillierPrivateKey",
    "PaillierPublicKey",
    "RecordLayout",
    "count_ops",
    "decode",
    "decrypt",
    "decrypt_integers",
    "decrypt_raw",
    "encode",
    "encrypt",
    "encrypt_integers",
    "generate_keypair",
    "pack_signed",
    "packed_histograms",
    "prepare_encryption",
    "residues_from_bytes",
    "residues_to_bytes",
    "security_bits",
    "short_exponent_bits",
    "unpack_signed",
]
