"""Paillier keys: phe's keys plus what the vectorised paths need.

phe stays the source of truth: a key pair is phe's (its primes drawn as phe draws
them, see :func:`generate_keypair`), and every ciphertext fedsk makes decrypts with
phe's private key (``PaillierPrivateKey.to_phe()``).
"""

import hashlib
import secrets
import threading

import gmpy2
from phe import paillier

from ._kernels import (
    RERANDOMISE_WINDOW,
    cached_table,
    owner_decrypt,
    owner_encrypt,
    public_encrypt,
)
from ._parallel import resolve_n_jobs, run_tasks

__all__ = [
    "DEFAULT_KEY_LENGTH",
    "MIN_KEY_LENGTH",
    "PaillierPrivateKey",
    "PaillierPublicKey",
    "generate_keypair",
    "security_bits",
    "short_exponent_bits",
]

DEFAULT_KEY_LENGTH = 2048
MIN_KEY_LENGTH = 1024
OBFUSCATIONS = ("fast", "standard")

# NIST SP 800-57 Part 1 Rev. 5, Table 2: security strength of an integer-factorisation
# modulus of k bits.
_NIST_STRENGTH = ((1024, 80), (2048, 112), (3072, 128), (7680, 192), (15360, 256))


def security_bits(key_length):
    """Security strength (bits) of a ``key_length``-bit modulus, per NIST SP 800-57."""
    strength = 0
    for bits, lam in _NIST_STRENGTH:
        if key_length >= bits:
            strength = lam
    return strength


def short_exponent_bits(key_length):
    """Length of the fast obfuscator's random exponent alpha: twice the strength.

    224 bits for a 2048-bit key, 160 for 1024. Finding alpha from ``h_s ** alpha`` by
    Pollard's lambda/kangaroo method costs about ``2 ** (bits / 2)`` group operations,
    which is the key's own strength; it is the rule NIST SP 800-56A Rev. 3 (5.6.1.1.1)
    applies to Diffie-Hellman private exponents. See ``SECURITY.md`` for the assumption.
    """
    return 2 * max(security_bits(key_length), 80)


def _check_obfuscation(obfuscation):
    if obfuscation not in OBFUSCATIONS:
        raise ValueError(f"obfuscation must be one of {OBFUSCATIONS}, got {obfuscation!r}")
    return obfuscation


_BASE_LOCK = threading.Lock()


class PaillierPublicKey:
    """A Paillier public key (g = n + 1) with fedsk's vectorised encryption.

    Parameters
    ----------
    n : int
        The modulus.
    obfuscation : {"fast", "standard"}, default="fast"
        How this party draws the randomness ``r**n`` of its own encryptions and
        re-randomisations under this key (see :func:`generate_keypair`).
    """

    def __init__(self, n, *, obfuscation="fast"):
        self.n = gmpy2.mpz(n)
        self.nsquare = self.n * self.n
        self.key_length = int(self.n.bit_length())
        self.max_int = self.n // 3 - 1  # phe's encodable range: [-max_int, max_int]
        self.obfuscation = _check_obfuscation(obfuscation)
        self.alpha_bits = short_exponent_bits(self.key_length)
        self._base = None

    # identity -----------------------------------------------------------------------
    @property
    def ciphertext_bytes(self):
        """Width in bytes of one ciphertext on the wire (bytes of n**2)."""
        return (int(self.nsquare).bit_length() + 7) // 8

    @property
    def fingerprint(self):
        """Short SHA-256 of the modulus, to name a key in logs and errors."""
        return hashlib.sha256(int(self.n).to_bytes((self.key_length + 7) // 8, "big")).hexdigest()[
            :16
        ]

    def __eq__(self, other):
        return isinstance(other, PaillierPublicKey) and self.n == other.n

    def __hash__(self):
        return hash(int(self.n))

    def __repr__(self):
        return f"PaillierPublicKey(key_length={self.key_length}, fingerprint={self.fingerprint})"

    def __getstate__(self):
        return {"n": int(self.n), "obfuscation": self.obfuscation}

    def __setstate__(self, state):
        self.__init__(state["n"], obfuscation=state["obfuscation"])

    def to_phe(self):
        """The same key as a :class:`phe.paillier.PaillierPublicKey`."""
        return paillier.PaillierPublicKey(int(self.n))

    # randomness --------------------------------------------------------------------
    @property
    def obfuscator_base(self):
        """This party's own fixed base ``r0**n mod n**2`` for the fast obfuscator.

        Drawn locally on first use, never taken from a peer, so that a peer cannot
        choose a base that would make re-randomisation transparent to it.
        """
        if self._base is None:
            with _BASE_LOCK:  # threads of one party must not draw two different bases
                if self._base is None:
                    r0 = gmpy2.mpz(secrets.randbelow(int(self.n) - 2) + 2)
                    self._base = gmpy2.powmod(r0, self.n, self.nsquare)
        return self._base

    def prepare_obfuscation(self, *, rerandomise_only=False):
        """Build this party's fixed-base table for the key now (``"fast"`` only).

        The first encryption or re-randomisation under a key otherwise builds it (about
        0.05 s at 2048 bits); a party that knows it will need the key soon can call this
        in a background thread while it waits for its peer. ``rerandomise_only``: the
        smaller table of a party that only re-randomises under this key.
        """
        if self.obfuscation == "fast":
            window = RERANDOMISE_WINDOW if rerandomise_only else 8
            cached_table(self.obfuscator_base, self.nsquare, self.alpha_bits, window)

    def _public_args(self):
        return (self.n, self.nsquare, self.obfuscator_base, self.obfuscation, self.alpha_bits)

    def raw_encrypt(self, plains):
        """Encrypt integers (any sign, reduced mod n) without the private key."""
        n = self.n
        return public_encrypt([gmpy2.mpz(m) % n for m in plains], *self._public_args())


class PaillierPrivateKey:
    """The private half: CRT encryption and decryption for the key owner.

    Holds p and q; never serialised with a fitted model (it has no pickle support on
    purpose: pickling raises).
    """

    def __init__(self, public_key, p, q, *, obfuscator_images=None):
        self.public_key = public_key
        p, q = gmpy2.mpz(p), gmpy2.mpz(q)
        if p * q != public_key.n:
            raise ValueError("p * q does not match the public key")
        self.p, self.q = p, q
        self.psquare, self.qsquare = p * p, q * q
        # phe's hp = L(g**(p-1) mod p**2)**-1 mod p with g = n + 1, where
        # g**(p-1) = 1 + (p-1) n mod p**2 (n**2 = 0 mod p**2), so L(...) = -q mod p:
        # the same numbers without two 1024-bit exponentiations
        self.hp = gmpy2.invert(-q % p, p)
        self.hq = gmpy2.invert(-p % q, q)
        self.q_inv_p = gmpy2.invert(q, p)
        self.qsquare_inv = gmpy2.invert(self.qsquare, self.psquare)
        # The fast obfuscator's base h_s, a uniform n-th residue mod n**2, kept as its
        # images mod p**2 and q**2: x**p mod p**2 and y**q mod q**2 for uniform x, y (the
        # n-th residues mod p**2 are the p-th powers, since q is prime to p (p - 1) for
        # primes of one length; likewise mod q**2), half the cost of h**n for each.
        # ``obfuscator_images``: (x**p mod p**2, y**q mod q**2) drawn so by the workers
        # that found the primes (see :func:`obfuscator_image`), key pairs made ahead.
        if obfuscator_images is None:
            obfuscator_images = (obfuscator_image(p), obfuscator_image(q))
        hp_s, hq_s = (gmpy2.mpz(v) for v in obfuscator_images)
        if not (1 < hp_s < self.psquare and 1 < hq_s < self.qsquare):
            raise ValueError("the obfuscator images must lie in (1, p**2) and (1, q**2)")
        self.hp_s, self.hq_s = hp_s, hq_s

    def __reduce__(self):
        raise TypeError(
            "a Paillier private key is not picklable: fedsk never stores it with a model. "
            "Keep it in memory, or export p and q yourself if you really must."
        )

    def __repr__(self):
        return f"PaillierPrivateKey(public_key={self.public_key!r})"

    def to_phe(self):
        """The same key as a :class:`phe.paillier.PaillierPrivateKey`."""
        return paillier.PaillierPrivateKey(self.public_key.to_phe(), int(self.p), int(self.q))

    def _crt_enc(self):
        return (
            self.public_key.n,
            self.p,
            self.q,
            self.psquare,
            self.qsquare,
            self.qsquare_inv,
            self.hp_s,
            self.hq_s,
        )

    def _crt_dec(self):
        return (
            self.public_key.n,
            self.p,
            self.q,
            self.psquare,
            self.qsquare,
            self.hp,
            self.hq,
            self.q_inv_p,
        )

    def raw_encrypt(self, plains, obfuscation=None):
        """Encrypt integers (any sign, reduced mod n) with the CRT shortcut."""
        pub = self.public_key
        obfuscation = _check_obfuscation(obfuscation or pub.obfuscation)
        n = pub.n
        return owner_encrypt(
            [gmpy2.mpz(m) % n for m in plains], self._crt_enc(), obfuscation, pub.alpha_bits
        )

    def raw_decrypt(self, cts):
        """Decrypt ciphertexts to integers in ``[0, n)``."""
        return owner_decrypt(cts, self._crt_dec())


def _prime(bits):
    """A random ``bits``-bit prime whose two top bits are set (module level, for workers).

    Drawn as phe's ``getprimeover`` draws it (GMP's ``next_prime`` after a random start
    from the system's CSPRNG), except that the start has its second-highest bit set too,
    as RSA key generation does (FIPS 186-4, B.3.1 asks p, q >= sqrt(2) * 2**(bits - 1)):
    the product of two such primes always has exactly ``2 * bits`` bits. phe sets only
    the top bit and draws both primes again until the product has the length asked for,
    which takes 2.6 pairs on average.
    """
    while True:
        start = secrets.randbits(bits) | (3 << (bits - 2))
        p = gmpy2.next_prime(start)
        if p.bit_length() == bits:  # (a start just below 2**bits can overflow)
            return int(p)


def obfuscator_image(prime):
    """``x ** prime mod prime**2`` for a uniform ``x``: a uniform prime-th power, the image
    mod ``prime**2`` of the fast obfuscator's base (see :class:`PaillierPrivateKey`)."""
    prime = gmpy2.mpz(prime)
    square = prime * prime
    x = gmpy2.mpz(secrets.randbelow(int(square) - 2) + 2)
    return gmpy2.powmod(x, prime, square)


def _factors(key_length, workers):
    """Two distinct primes whose product has ``key_length`` bits; in parallel workers."""
    half = key_length // 2
    while True:
        if workers > 1:
            p, q = run_tasks([(_prime, (half,)), (_prime, (half,))], workers=workers)
        else:
            p, q = _prime(half), _prime(half)
        if distinct_enough(p, q):
            return p, q


def generate_keypair(key_length=DEFAULT_KEY_LENGTH, *, obfuscation="fast", n_jobs=None):
    """Generate a Paillier key pair (phe's keys).

    Parameters
    ----------
    key_length : int, default=2048
        Bits of the modulus n. At least 1024 (tests); 2048 is the default for users.
    obfuscation : {"fast", "standard"}, default="fast"
        ``"fast"`` draws each encryption's randomness as ``h_s ** alpha`` with a fixed
        ``h_s = h ** n`` and a fresh ``alpha`` of :func:`short_exponent_bits` bits,
        computed from fixed-base tables (Damgard, Jurik and Nielsen 2010; as in
        SecretFlow HEU). It adds the assumption that such short-exponent powers are
        indistinguishable from uniform n-th residues. ``"standard"`` draws a uniform
        n-th residue ``r ** n`` exactly as phe does.
    n_jobs : int, default=None
        With more than one worker, the two primes are searched for at once in two worker
        processes (the party's own, as every parallel step): the search holds the GIL
        for tens of milliseconds at a time, which would stall this process's other
        threads (an estimator aligning samples while its key pair is made, a server
        answering requests).

    Notes
    -----
    Each prime is drawn as phe draws it (GMP's ``next_prime`` after a random start from
    the system's CSPRNG), with the two top bits of the start set, as RSA key generation
    does, so that ``n`` always has exactly ``key_length`` bits: phe's own
    ``generate_paillier_keypair`` sets only the top bit and draws both primes again
    until it does (2.6 pairs on average, about 60% of its time).

    Returns
    -------
    public_key : PaillierPublicKey
    private_key : PaillierPrivateKey
    """
    check_key_length(key_length)
    p, q = _factors(key_length, resolve_n_jobs(n_jobs))
    pub = PaillierPublicKey(gmpy2.mpz(p) * q, obfuscation=obfuscation)
    return pub, PaillierPrivateKey(pub, p, q)


def check_key_length(key_length):
    """Raise ValueError unless ``key_length`` is a key length :func:`generate_keypair` takes."""
    if not isinstance(key_length, int) or key_length < MIN_KEY_LENGTH or key_length % 2:
        # (phe draws two primes of half the length until n has exactly key_length bits,
        # which never happens for an odd length)
        raise ValueError(f"key_length must be an even int >= {MIN_KEY_LENGTH}, got {key_length!r}")


def distinct_enough(p, q):
    """FIPS 186-4, B.3.1: ``|p - q| > 2**(half - 100)``, which random primes all but surely
    satisfy."""
    half = max(int(p).bit_length(), int(q).bit_length())
    return abs(int(p) - int(q)) > 1 << (half - 100)
