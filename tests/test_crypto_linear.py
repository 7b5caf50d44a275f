"""Crypto primitives the linear models add: masks, residues, signed slots, matmul, counts."""

import numpy as np
import pytest

from fedsk.crypto import (
    MARGIN_BITS,
    Masks,
    count_ops,
    decode,
    decrypt,
    decrypt_integers,
    decrypt_raw,
    encode,
    encrypt,
    encrypt_integers,
    pack_signed,
    residues_from_bytes,
    residues_to_bytes,
    unpack_signed,
)
from fedsk.exceptions import FedskError, PackingOverflowError

rng = np.random.default_rng(7)


def test_matmul_matches_plaintext_and_dot(keypair):
    pub, priv = keypair
    E = rng.normal(size=(3, 5))
    X = rng.normal(size=(5, 2))
    enc = encrypt(priv, E.ravel())
    got = decrypt(priv, enc.matmul(3, X, exponent=-8)).reshape(3, 2)
    np.testing.assert_allclose(got, E @ X, atol=1e-7)
    # one row is exactly dot() of that row's ciphertexts
    row = enc[5:10]
    np.testing.assert_allclose(decrypt(priv, row.dot(X, exponent=-8)), got[1], atol=1e-12)
    with pytest.raises(ValueError, match="cannot multiply"):
        enc.matmul(4, X)


def test_add_encoded_and_rescale_are_exact(keypair):
    pub, priv = keypair
    enc = encrypt_integers(priv, [5, -7, 0], exponent=-2)
    big = [1 << 300, -(1 << 200), 3]
    out = enc.add_encoded(big)
    assert decrypt_integers(priv, out) == [5 + (1 << 300), -7 - (1 << 200), 3]
    finer = enc.rescale(-5)
    assert finer.exponent == -5
    assert decrypt_integers(priv, finer) == [5 * 16**3, -7 * 16**3, 0]
    np.testing.assert_array_equal(decrypt(priv, finer), decrypt(priv, enc))
    with pytest.raises(ValueError, match="cannot raise"):
        enc.rescale(0)


def test_masks_hide_and_unmask(keypair):
    pub, priv = keypair
    values = np.array([0.5, -3.25, 1e6])
    enc = encrypt(priv, values, exponent=-8)
    masks = Masks(3, 32 + 24 + MARGIN_BITS)
    masked = masks.apply(enc)
    assert masked.ciphertexts != enc.ciphertexts  # added and re-randomised
    residues = decrypt_raw(priv, masked)
    # the residues are the masks plus the values, nothing like the values themselves
    assert all(r > 1 << masks.bits for r in residues)
    wire = residues_to_bytes(pub, residues)
    back = masks.unmask(pub, residues_from_bytes(pub, wire))
    np.testing.assert_array_equal(decode(back, -8), values)
    # a value beyond the hiding margin is refused
    small = Masks(1, MARGIN_BITS + 8)
    huge = encrypt_integers(priv, [1 << 20], exponent=0)
    with pytest.raises(FedskError, match="hiding margin"):
        small.unmask(pub, decrypt_raw(priv, small.apply(huge)))
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(masks)


def test_packed_masks_take_fewer_decryptions(keypair):
    pub, priv = keypair
    values = rng.normal(scale=100.0, size=23)
    enc = encrypt(priv, values, exponent=-8)
    masks = Masks(23, 40 + 32 + MARGIN_BITS, pack=True)
    masked = masks.apply(enc)
    assert len(masked) == Masks.packed_length(23, masks.bits, pub.key_length) < 23
    back = masks.unmask(pub, decrypt_raw(priv, masked))
    np.testing.assert_array_equal(decode(back, -8), decode(encode(values, -8, pub.max_int), -8))
    with pytest.raises(ValueError, match="packed residues"):
        masks.unmask(pub, decrypt_raw(priv, masked)[:-1])
    tail = masks[20:]
    assert tail.pack and tail.values == masks.values[20:]


def test_residues_wire_validates(keypair):
    pub, _ = keypair
    width = (pub.key_length + 7) // 8
    with pytest.raises(ValueError, match="shape"):
        residues_from_bytes(pub, np.zeros((2, width - 1), np.uint8))
    too_big = np.frombuffer(int(pub.n).to_bytes(width, "big"), np.uint8).reshape(1, -1)
    with pytest.raises(ValueError, match="out of range"):
        residues_from_bytes(pub, too_big)
    with pytest.raises(ValueError, match="outside"):
        residues_to_bytes(pub, [-1])


def test_signed_slots_survive_linear_algebra(keypair):
    """Packed columns multiplied by plaintext scalars give packed inner products."""
    pub, priv = keypair
    bits = 80
    cols = rng.integers(-(2**20), 2**20, size=(6, 3))  # 6 rows, 3 slots per plaintext
    packed = [pack_signed(row.tolist(), bits) for row in cols]
    enc = encrypt_integers(priv, packed)
    scal = rng.integers(-(2**20), 2**20, size=6)
    out = enc.dot(scal.reshape(-1, 1), exponent=0)
    got = unpack_signed(decrypt_integers(priv, out)[0], 3, bits)
    assert got == (scal @ cols).tolist()
    with pytest.raises(PackingOverflowError):
        unpack_signed(1 << 200, 2, bits)


def test_count_ops_counts_and_isolates(keypair):
    pub, priv = keypair
    with count_ops() as outer:
        enc = encrypt(priv, [1.0, 2.0])
        with count_ops(isolated=True) as inner:
            decrypt(priv, enc.dot(np.ones((2, 3))).rerandomise())
    assert outer == {"encrypt": 2}
    assert inner == {
        "multiexp_terms": 6,
        "multiexp_short_terms": 6,
        "multiexp_outputs": 3,
        "rerandomise": 3,
        "decrypt": 3,
    }
