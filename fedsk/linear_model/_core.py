"""The numerical core of logistic regression, shared by the guest, the hosts and the
plaintext path: losses, the block state of the conjugate-gradient and L-BFGS solvers,
and the proximal SGD update. Plain numpy; nothing here knows who holds which column.

The objective is scikit-learn's: ``C * sum_i s_i loss_i + 0.5 * ||w||^2`` (intercept not
penalised), divided by ``C * sum(s)``::

    f(w) = sum_i s~_i loss(z_i) / n + lam / 2 * ||w_R||^2,   lam = 1 / (C * sum(s))

where ``s~ = s * n / sum(s)`` are the sample weights normalised to mean 1, ``z = X w``
and ``R`` the penalised coordinates. ``"exact"`` uses the logistic loss
``log(1 + exp(z)) - y z``; ``"taylor"`` its second-order expansion at ``z = 0``,
``log 2 - y' z / 2 + z^2 / 8`` with ``y' = 2y - 1``, which is a quadratic in ``w``:
``f(w) = log 2 - b.w + w.A w / 2`` with ``A = X^T S~ X / (4n) + lam R`` and
``b = X^T S~ y' / (2n)``.
"""

import numpy as np
from scipy import linalg
from scipy.special import expit

from ..crypto import MARGIN_BITS

__all__ = [
    "EXP_C",
    "EXP_ENC",
    "EXP_VEC",
    "EXP_X",
    "EXP_Z",
    "MIN_X_BITS",
    "LbfgsBlock",
    "PCGBlock",
    "lbfgs_coefficients",
    "loss_and_residual",
    "mask_bits",
    "penalty_value",
    "sgd_update",
    "slot_groups",
    "slot_layout",
]

# Fixed-point exponents (base 16) of everything that is encrypted or multiplied into a
# ciphertext. They are public constants, so an exponent never tells anything about a
# value. EXP_X: feature values used as multi-exponentiation scalars (24 fractional
# bits); EXP_VEC: solver vectors used as scalars (32 bits); EXP_ENC: encrypted values
# (52 bits).
EXP_X = -6
EXP_VEC = -8
EXP_ENC = -13
EXP_Z = -8  # the guest's weighted columns in the Taylor protocol's shared Gram
EXP_C = EXP_Z + EXP_X
LOG2 = float(np.log(2.0))
# Public bounds the encrypted protocols rely on (each party checks its own data):
MAX_Z_BITS = 30  # |guest value| < 2**30 in the shared Gram (32 fractional bits: int64)
MAX_X_BITS = 38  # |host feature| < 2**38 (24 fractional bits: int64 scalars)
# a column whose values are all below 2**MIN_X_BITS keeps at most 14 significant bits
# there: refused (the hosts' columns always, the guest's in the Taylor protocol)
MIN_X_BITS = -10
MAX_VEC_BITS = 30  # |solver vector| < 2**30 (32 fractional bits: int64 scalars)
VALUE_BITS = 128  # a masked value is hidden as long as |value| < 2**128


def mask_bits(exponent):
    """Mask length that hides any value below ``2**VALUE_BITS`` stored at ``exponent``."""
    return VALUE_BITS + 4 * max(-int(exponent), 0) + MARGIN_BITS


def gram_value_bits(n):
    """Bound (bits, real units) on the entries of ``Z^T X_h`` over ``n`` rows."""
    return MAX_Z_BITS + MAX_X_BITS + int(n).bit_length()


def gram_mask_bits(n):
    """Length of the masks (shares) that hide the shared Gram's entries."""
    return gram_value_bits(n) + 4 * -EXP_C + MARGIN_BITS


def slot_layout(n, width, key_length, weighted):
    """``(slots, slot_bits)``: how many values one Taylor-protocol plaintext carries.

    A slot must hold a masked share of the Gram and a product ``C u`` (``width`` terms,
    ``|u| < 2**MAX_VEC_BITS``). With sample weights nothing is packed (one slot).
    Both parties derive the layout from public sizes.
    """
    whole = int(key_length) - 4
    if weighted:
        return 1, whole
    share = gram_mask_bits(n) + 3
    product = (
        gram_value_bits(n) + MAX_VEC_BITS + int(width).bit_length() + 4 * -(EXP_C + EXP_VEC) + 2
    )
    bits = max(share, product)
    return max(1, whole // bits), bits


def slot_groups(count, slots):
    """Consecutive groups of at most ``slots`` indices covering ``range(count)``."""
    return [np.arange(i, min(i + slots, count)) for i in range(0, count, slots)]


def loss_and_residual(z, y, sw, protocol):
    """Weighted loss sum ``sum s~ loss(z)`` and residual ``s~ * dloss/dz`` (per column).

    ``z`` and ``y`` have shape (n, k) (``y`` in {0, 1}), ``sw`` shape (n,).
    """
    sw = sw[:, None]
    if protocol == "exact":
        loss = np.logaddexp(0.0, z) - y * z
        res = expit(z) - y
    else:
        yp = 2.0 * y - 1.0
        loss = LOG2 - yp * z / 2.0 + z * z / 8.0
        res = z / 4.0 - yp / 2.0
    return (sw * loss).sum(axis=0), sw * res


def penalty_value(w, penalised, penalty, lam):
    """``lam/2 ||w_R||^2`` (l2), ``lam ||w_R||_1`` (l1) or 0, per column."""
    wr = w[penalised]
    if penalty == "l2":
        return lam / 2.0 * (wr * wr).sum(axis=0)
    if penalty == "l1":
        return lam * np.abs(wr).sum(axis=0)
    return np.zeros(w.shape[1])


def sgd_update(w, grad, eta, penalised, penalty, lam):
    """One (proximal) gradient step on this party's block, in place.

    ``grad`` is the loss gradient without the penalty. l2 adds ``lam w_R``; l1 applies
    soft-thresholding by ``eta * lam`` to the penalised coordinates (each party does it
    on its own block: the l1 proximal operator is separable).
    """
    grad = grad.copy()
    if penalty == "l2":
        grad[penalised] += lam * w[penalised]
    w -= eta * grad
    if penalty == "l1":
        wr = w[penalised]
        w[penalised] = np.sign(wr) * np.maximum(np.abs(wr) - eta * lam, 0.0)
    return w


def _factor(matrix):
    """Cholesky factor of an SPD matrix, with a little jitter when it is singular."""
    matrix = np.asarray(matrix, dtype=np.float64)
    scale = max(float(np.abs(np.diag(matrix)).max(initial=0.0)), 1e-300)
    for jitter in (0.0, 1e-12, 1e-9, 1e-6):
        try:
            return linalg.cho_factor(matrix + jitter * scale * np.eye(len(matrix)))
        except linalg.LinAlgError:
            continue
    return None


class PCGBlock:
    """One party's coordinates in Chronopoulos-Gear preconditioned CG (one reduction
    per iteration) on ``A x = b`` for ``k`` right-hand sides at once.

    Parameters
    ----------
    gram : ndarray of shape (d, d)
        This party's weighted Gram ``X_k^T S~ X_k`` (raw, not divided by 4n); ``None``
        when the party's own block product comes from elsewhere (weighted host).
    lam : ndarray of shape (d,)
        Penalty per coordinate (0 for the intercept).
    n : float
        Sum of the normalised weights (the number of samples).
    precond_gram : ndarray of shape (d, d), default=None
        The Gram used for the preconditioner (default ``gram``).
    blocks : list of index arrays, default=None
        Block-Jacobi blocks inside this party (default: one block).

    Every party updates its own block with the step sizes the guest broadcasts::

        p = u + beta p;  s = w + beta s;  x += alpha p;  r -= alpha s
        u = M^-1 r;      w = A u   (the cross-party product)
        gamma = r.u;     delta = w.u
    """

    def __init__(self, gram, lam, n, *, precond_gram=None, blocks=None):
        self.gram = gram
        self.lam = np.asarray(lam, dtype=np.float64)
        self.n = float(n)
        d = len(self.lam)
        pg = gram if precond_gram is None else precond_gram
        self.blocks = [np.arange(d)] if blocks is None else [np.asarray(b) for b in blocks]
        self.factors = []
        for idx in self.blocks:
            m = pg[np.ix_(idx, idx)] / (4.0 * self.n) + np.diag(self.lam[idx])
            self.factors.append(_factor(m))

    def start(self, b, x0):
        self.b = np.array(b, dtype=np.float64)
        self.x = np.array(x0, dtype=np.float64)
        self.r = self.b.copy()
        self.u = np.zeros_like(self.b)
        self.w = np.zeros_like(self.b)
        self.p = np.zeros_like(self.b)
        self.s = np.zeros_like(self.b)

    def update(self, alpha, beta, active):
        a, bt = alpha[active], beta[active]
        self.p[:, active] = self.u[:, active] + bt * self.p[:, active]
        self.s[:, active] = self.w[:, active] + bt * self.s[:, active]
        self.x[:, active] += a * self.p[:, active]
        self.r[:, active] -= a * self.s[:, active]

    def precondition(self, active):
        r = self.r[:, active]
        u = np.empty_like(r)
        for idx, fac in zip(self.blocks, self.factors):
            if fac is None:
                u[idx] = r[idx]
            else:
                u[idx] = linalg.cho_solve(fac, r[idx])
        self.u[:, active] = u
        return u

    def own_product(self, v):
        """``X_k^T S~ X_k v`` for this party's block (local Gram)."""
        return self.gram @ v

    def finish(self, v, cross, active, *, target="u"):
        """``(A v)_k`` from this block's product ``cross`` (everything but lam) and scalars.

        ``target="u"``: v is u; store w and return ``(gamma, delta, rmax)`` per active
        column. ``target="x"`` (warm start): set ``r = b - (A x)_k`` and return
        ``x.(b + r)`` per active column (for the starting objective).
        """
        av = cross / (4.0 * self.n) + self.lam[:, None] * v
        if target == "x":
            self.r[:, active] = self.b[:, active] - av
            x = self.x[:, active]
            return (x * (self.b[:, active] + self.r[:, active])).sum(axis=0)
        self.w[:, active] = av
        u, r = self.u[:, active], self.r[:, active]
        gamma = (r * u).sum(axis=0)
        delta = (av * u).sum(axis=0)
        return gamma, delta, self.rmax(active)

    def rmax(self, active):
        r = self.r[:, active]
        return np.abs(r).max(axis=0) if r.shape[0] else np.zeros(r.shape[1])


class LbfgsBlock:
    """One party's coordinates in vector-free L-BFGS (Chen, Wang and Zhou 2014).

    The search direction is a combination of the basis ``[s_1..s_m, y_1..y_m, g]``;
    every inner product the two-loop recursion needs is an entry of the basis' Gram
    matrix, which is the sum of each party's local Gram. So each party keeps its own
    slices of the history and only ``(2m+1)^2`` scalars and ``2m+1`` coefficients cross.
    """

    def __init__(self, w0, memory):
        self.w = np.array(w0, dtype=np.float64)
        self.memory = int(memory)
        self.S, self.Y = [], []
        self.g = None
        self.p = None
        self._pending = None

    def set_gradient(self, g):
        g = np.asarray(g, dtype=np.float64)
        if self._pending is not None and self.g is not None:
            self.S.append(self._pending)
            self.Y.append(g - self.g)
            if len(self.S) > self.memory:
                del self.S[0], self.Y[0]
        self._pending = None
        self.g = g

    def basis(self):
        return np.column_stack([*self.S, *self.Y, self.g])

    def gram(self):
        B = self.basis()
        return B.T @ B

    def direction(self, coefs):
        self.p = self.basis() @ np.asarray(coefs, dtype=np.float64)
        return self.p

    def move(self, t):
        step = t * self.p
        self.w += step
        self._pending = step


def lbfgs_coefficients(gram, n_pairs):
    """Coefficients of the L-BFGS direction ``-H g`` on the basis ``[S, Y, g]``.

    ``gram`` is the (2m+1)-square Gram of the basis summed over all parties. Pairs with
    non-positive curvature ``s.y`` are skipped (their coefficients stay 0).
    """
    m = int(n_pairs)
    B = np.asarray(gram, dtype=np.float64)
    delta = np.zeros(2 * m + 1)
    delta[-1] = -1.0
    good = [i for i in range(m) if B[i, m + i] > 1e-12 * np.sqrt(B[i, i] * B[m + i, m + i])]
    alphas = {}
    for i in reversed(good):
        rho = 1.0 / B[i, m + i]
        alphas[i] = rho * (delta @ B[:, i])
        delta[m + i] -= alphas[i]
    if good:
        last = good[-1]
        delta *= B[last, m + last] / B[m + last, m + last]
    elif B[-1, -1] > 0:
        delta /= np.sqrt(B[-1, -1])  # first step: unit length, as scipy's L-BFGS-B does
    for i in good:
        rho = 1.0 / B[i, m + i]
        beta = rho * (delta @ B[:, m + i])
        delta[i] += alphas[i] - beta
    return delta
