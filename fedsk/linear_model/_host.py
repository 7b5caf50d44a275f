"""The host half of FederatedLogisticRegression: plain functions the party server calls.

``setup`` starts a fit in a session whose samples are aligned, ``step`` answers one
protocol step (the ``op`` field names it; out-of-order steps are refused), ``scores``
serves predictions from a stored model. The host keeps its coefficients: they are
saved in its model store at ``finish`` and never sent. Every field of every request is
validated; anything unusable is refused with a :class:`~fedsk.exceptions.RequestError`
(a JSON 4xx at the server).

Missing values: a host column's NaNs are replaced by the column's mean over the
session's aligned rows (0 for a column with no value there); the means are stored with
the model and used again when scoring.

See :mod:`fedsk.linear_model._protocol` for the guest half and the message flow.
"""

import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..crypto import (
    EncryptedArray,
    Masks,
    count_ops,
    decode,
    decrypt_integers,
    decrypt_raw,
    encrypt,
    encrypt_integers,
    generate_keypair,
    pack_signed,
    residues_from_bytes,
    residues_to_bytes,
    unpack_signed,
)
from ..exceptions import BadMessageError, ConflictError, FedskError, RequestError
from ..federation import (
    Message,
    aligned_rows,
    model_columns,
    public_key_from_wire,
    public_key_to_wire,
)
from ._core import (
    EXP_C,
    EXP_ENC,
    EXP_VEC,
    EXP_X,
    EXP_Z,
    MAX_X_BITS,
    MIN_X_BITS,
    LbfgsBlock,
    PCGBlock,
    gram_mask_bits,
    mask_bits,
    penalty_value,
    sgd_update,
    slot_groups,
    slot_layout,
)

_log = logging.getLogger("party_server")

__all__ = ["scores", "setup", "step"]

MODEL_KIND = "logistic"
MAX_X = 2.0**MAX_X_BITS  # host features are multi-exponentiation scalars (24 fraction bits)
MIN_X = 2.0**MIN_X_BITS


def _check_scale(ctx, X):
    """Refuse a column too large for the fixed-point scalars, or too small for them (its
    values would round to a few steps of 2**-24, and the fit would not be the one on the
    true values). What is refused is named by column; its values go to the host's log."""
    if not X.size:
        return
    top = np.abs(X).max(axis=0)
    small = (top > 0) & (top < MIN_X)
    for bad, words in (
        (top >= MAX_X, f"values of 2**{MAX_X_BITS} or more in absolute value, too large"),
        (small, f"only values below 2**{MIN_X_BITS} in absolute value, too small"),
    ):
        if not bad.any():
            continue
        j = int(np.flatnonzero(bad)[0])
        names = ctx.dataset.feature_names  # (None unless the host publishes them)
        column = f"column {names[j]!r}" if names else f"column {j} of the host's"
        _log.warning(  # the value for the host's operator only: it is a customer's
            "logistic regression refused: %s of dataset %r has largest absolute value "
            "%.3g, outside [2**%d, 2**%d)",
            column,
            ctx.dataset.name,
            top[j],
            MIN_X_BITS,
            MAX_X_BITS,
        )
        raise RequestError(
            f"host {column} holds {words} for logistic regression (host values are "
            "encoded with 24 fractional bits): ask the host's operator to standardise "
            "that column (its log has the details)"
        )


MAX_TARGETS = 1000
MAX_MEMORY = 50
_PROTOCOLS = {"taylor": ("pcg", "sgd"), "exact": ("lbfgs", "sgd")}


def prepare_features(X, means=None):
    """Impute NaNs with column means (computed here when ``means`` is None)."""
    X = np.array(X, dtype=np.float64)
    if means is None:
        with np.errstate(all="ignore"):
            counts = (~np.isnan(X)).sum(axis=0)
            sums = np.where(np.isnan(X), 0.0, X).sum(axis=0)
            means = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    nan = np.isnan(X)
    if nan.any():
        X[nan] = np.take(means, np.nonzero(nan)[1])
    return X, np.asarray(means, dtype=np.float64)


class _Fit:
    """A fit in progress in one session (kept in memory in ``ctx.session.state``)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.expect = set()
        self.ops = Counter()  # Paillier operations of this fit (reported at the end)
        self._keygen = self._pair = None

    def start_keygen(self, key_length):
        """This fit's own key pair: a spare made while the host was idle, or a new one."""
        if self._keygen is None:
            self._keygen = _take_keypair(key_length)

    def _keys(self):
        if self._pair is None:
            self._pair = self._keygen.result()
        return self._pair

    @property
    def own(self):
        """The host's own public key (``taylor``)."""
        return self._keys()[0]

    @property
    def private(self):
        return self._keys()[1]

    def require(self, op):
        if op not in self.expect:
            raise ConflictError(
                f"step {op!r} is out of order for this fit; expected one of {sorted(self.expect)}"
            )


# Key pairs for the next taylor fits, made in the background after a fit ends (the
# prime search holds the GIL, so making them while a fit runs would slow its answers).
# Each pair serves exactly one fit; none is ever stored on disk or reused.
_KEYGEN = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsk-keygen")
_SPARE_KEYS = {}
_SPARE_LOCK = threading.Lock()


def _take_keypair(key_length):
    with _SPARE_LOCK:
        spare = _SPARE_KEYS.pop(key_length, None)
    return spare if spare is not None else _KEYGEN.submit(generate_keypair, key_length)


def _prepare_keypair(key_length):
    with _SPARE_LOCK:
        if key_length not in _SPARE_KEYS and len(_SPARE_KEYS) < 4:
            _SPARE_KEYS[key_length] = _KEYGEN.submit(generate_keypair, key_length)


def _fit(ctx):
    fit = ctx.session.state.get("linear")
    if fit is None:
        raise ConflictError("start the fit (POST .../linear) before its steps")
    return fit


def _guard(fn):
    """Turn an unexpected bad value into a refusal: the server never answers 500 to it."""

    def run(ctx, msg):
        try:
            return fn(ctx, msg)
        except RequestError:
            raise
        except (ValueError, ArithmeticError, TypeError, LookupError, FedskError) as exc:
            # a value the checks above let through but the arithmetic cannot use
            raise BadMessageError(f"cannot use this request: {exc}") from None

    run.__name__, run.__doc__ = fn.__name__, fn.__doc__
    return run


# -- setup ---------------------------------------------------------------------------------


@_guard
def setup(ctx, msg):
    """Start a fit: check the guest's key and options, prepare the aligned features.

    For ``protocol="taylor"`` the host starts making its own key pair; its public key
    goes out with the first answer that carries ciphertexts under it.
    """
    if "linear" in ctx.session.state:
        raise ConflictError("this session already started a fit; open a new session")
    rows = aligned_rows(ctx)
    protocol = msg.field("protocol", str, choices=set(_PROTOCOLS))
    solver = msg.field("solver", str, choices=set(_PROTOCOLS[protocol]))
    key = public_key_from_wire(msg.field("key", dict), min_key_length=ctx.min_key_length)
    n_rows = msg.field("n_rows", int, minimum=1)
    if n_rows != len(rows):
        raise ConflictError(f"the session has {len(rows)} aligned rows, not {n_rows}")
    n_targets = msg.field("n_targets", int, minimum=1, maximum=MAX_TARGETS)
    penalty = msg.field("penalty", str, choices={"l2", "l1", "none"})
    if penalty == "l1" and solver != "sgd":
        raise BadMessageError("penalty 'l1' needs solver 'sgd'")
    lam = float(msg.field("lam", (int, float), minimum=0))
    learning_rate = float(msg.field("learning_rate", (int, float), default=0.1, minimum=0))
    memory = msg.field("memory", int, default=10, minimum=1, maximum=MAX_MEMORY)
    weighted = msg.field("weighted", bool, default=False)
    warm = msg.field("warm_start", (str, type(None)), default=None)

    if not np.isfinite(lam) or not np.isfinite(learning_rate):
        raise BadMessageError("lam and learning_rate must be finite")
    X, means = prepare_features(ctx.dataset.X[rows])
    _check_scale(ctx, X)
    d = X.shape[1]
    W = np.zeros((d, n_targets))
    if warm is not None:
        meta, arrays = ctx.models.load(warm, ctx.session.peer)
        coef = arrays.get("coef")
        if meta.get("kind") != MODEL_KIND or meta.get("dataset") != ctx.session.dataset:
            raise ConflictError(
                f"warm_start model {warm} was not fitted by logistic regression on this dataset"
            )
        if not np.array_equal(model_columns(meta, ctx.dataset, warm), np.arange(d)):
            raise ConflictError(
                f"the host's columns changed since model {warm} was fitted (its data file "
                "was exported again with other or moved columns): warm_start cannot "
                "continue it; fit afresh (warm_start=False)"
            )
        if coef is None or coef.shape != W.shape:
            raise ConflictError(
                "warm_start model does not match this fit (dataset, features or classes)"
            )
        W = np.array(coef, dtype=np.float64)
    fit = _Fit(
        protocol=protocol,
        solver=solver,
        guest_key=key,
        n=len(rows),
        X=X,
        means=means,
        K=n_targets,
        penalty=penalty,
        lam=lam,
        eta=learning_rate,
        memory=memory,
        weighted=weighted,
        W=W,
        masks=None,
        pending=None,
        gram_next=None,  # the row the next gram chunk starts at (None: send row 0 first)
    )
    answer = {"n_features": d, "warm_start": warm is not None}
    if protocol == "taylor":
        fit.start_keygen(key.key_length)  # the key goes out with the first answer needing it
    fit.expect = {
        ("taylor", "pcg"): {"gram"},
        ("taylor", "sgd"): {"sgd.grad", "finish"},
        ("exact", "lbfgs"): {"lbfgs.start"},
        ("exact", "sgd"): {"sgd.scores", "sgd.grad", "finish"},
    }[protocol, solver]
    ctx.session.state["linear"] = fit
    return Message(answer)


# -- steps ----------------------------------------------------------------------------------


@_guard
def step(ctx, msg):
    """One protocol step; the ``op`` field says which."""
    fit = _fit(ctx)
    op = msg.field("op", str, choices=set(_STEPS))
    fit.require(op)
    with count_ops(fit.ops, isolated=True):
        return _STEPS[op](ctx, fit, msg)


def _rows(msg, fit, name="rows"):
    rows = msg.array(name, kind="i", ndim=1, low=0, high=fit.n)
    if len(rows) == 0 or len(np.unique(rows)) != len(rows):
        raise BadMessageError(f"array {name!r} must list distinct rows")
    return rows.astype(np.int64)


def _residues(msg, name, key, length):
    arr = msg.array(name, kind="u", ndim=2)
    if arr.shape[0] != length:
        raise BadMessageError(f"array {name!r} must hold {length} values")
    try:
        return residues_from_bytes(key, arr)
    except ValueError as exc:
        raise BadMessageError(f"array {name!r}: {exc}") from None


def _packed(fit, count):
    """How many ciphertexts ``count`` packed masked values took (see Masks)."""
    return Masks.packed_length(count, fit.masks.bits, fit.guest_key.key_length)


def _columns(enc, n_columns):
    """Split a column-major EncryptedArray into ``n_columns`` equal columns."""
    m = len(enc) // n_columns
    return [enc[j * m : (j + 1) * m] for j in range(n_columns)]


# Taylor protocol, PCG: shared Gram, then one round trip per iteration ----------------------


def _gram(ctx, fit, msg):
    """Accumulate ``[[Z^T X_h]]`` over row chunks of the guest's packed columns."""
    start = msg.field("start", int, minimum=0)
    n_coef = msg.field("n_coef", int, minimum=1, maximum=10_000)
    slots = msg.field("slots", int, minimum=1)
    slot_bits = msg.field("slot_bits", int, minimum=1)
    d = fit.X.shape[1]
    layout = slot_layout(fit.n, max(n_coef, d, fit.K), fit.guest_key.key_length, fit.weighted)
    if (slots, slot_bits) != layout:
        raise BadMessageError(f"slots and slot_bits must be {layout} for this fit")
    if start == 0:
        fit.gram_acc, fit.gram_g_acc, fit.gram_next = None, None, 0
        fit.n_coef, fit.slots, fit.slot_bits = n_coef, slots, slot_bits
        fit.coef_groups = slot_groups(n_coef, slots)
        fit.target_groups = slot_groups(fit.K, slots)
        fit.host_groups = slot_groups(d, slots)
    elif fit.gram_next is None:
        raise ConflictError(f"gram chunks must arrive in order: expected row 0, got row {start}")
    elif start != fit.gram_next or n_coef != fit.n_coef:
        raise ConflictError(
            f"gram chunks must arrive in order: expected row {fit.gram_next} with n_coef "
            f"{fit.n_coef}, got row {start} with n_coef {n_coef}"
        )
    n_cols = len(fit.coef_groups) + len(fit.target_groups) + (1 if fit.weighted else 0)
    total = msg.arrays["z"].shape[0] if "z" in msg.exponents else 0
    if total % n_cols or total == 0:
        raise BadMessageError(f"ciphertext array 'z' must hold {n_cols} equal columns")
    m = total // n_cols
    if start + m > fit.n:
        raise BadMessageError("gram chunk goes past the last aligned row")
    Z = msg.encrypted("z", fit.guest_key, length=n_cols * m, exponent=EXP_Z)
    Xc = fit.X[start : start + m]
    acc = Z.matmul(n_cols, Xc, exponent=EXP_X, n_jobs=ctx.n_jobs)  # (packed column, d)
    fit.gram_acc = acc if fit.gram_acc is None else fit.gram_acc.add(acc)
    if fit.weighted:  # the last column holds the weights alone
        acc_g = _weighted_gram(fit, Z[(n_cols - 1) * m :], Xc, ctx.n_jobs)
        fit.gram_g_acc = acc_g if fit.gram_g_acc is None else fit.gram_g_acc.add(acc_g)
    fit.gram_next = start + m
    if fit.gram_next < fit.n:
        return Message({"received": fit.gram_next})
    return _gram_shares(ctx, fit)


def _product_exponent(X):
    """Finest exponent at which products of two feature values fit an int64 scalar."""
    top = float(np.abs(X).max(initial=0.0)) ** 2
    for e in (EXP_X, -5, -4, -3, -2, -1, 0):
        if top * 16.0 ** (-2 * e) < 2.0**61:
            return e
    raise RequestError("host feature values are too large for a weighted fit; scale them")


def _weighted_gram(fit, weights_col, Xc, n_jobs):
    """``[[X^T S~ X]]`` (upper triangle) from the encrypted weights: d(d+1)/2 multiexps."""
    e = _product_exponent(fit.X)
    q = np.rint(np.ldexp(Xc, -4 * e)).astype(np.int64)
    iu = np.triu_indices(q.shape[1])
    pairs = q[:, iu[0]] * q[:, iu[1]]  # x_j x_k at exponent 2e, as int64 scalars
    out = weights_col.dot(pairs, exponent=0, n_jobs=n_jobs)
    return EncryptedArray(out.public_key, out.ciphertexts, out.exponent + 2 * e)


def _gram_shares(ctx, fit):
    """Keep ``[[C]]``; split ``C`` and ``B`` into random shares; send the guest its part.

    The guest gets ``[[C + R]]`` and ``[[B + R_b]]`` (packed like its columns; its
    shares) and ``[[-R]]`` under the host's key, packed along the host's columns (the
    host's share of ``C``, for the guest's products).
    """
    d, n_coef, K, b = fit.X.shape[1], fit.n_coef, fit.K, fit.slot_bits
    Q = fit.gram_acc  # row-major (packed guest column, host column)
    masks = Masks((n_coef + K) * d, gram_mask_bits(fit.n))
    R = np.array(masks.values[: n_coef * d], dtype=object).reshape(n_coef, d)
    Rb = np.array(masks.values[n_coef * d :], dtype=object).reshape(K, d)
    packed = [pack_signed(R[g, k], b) for g in fit.coef_groups for k in range(d)]
    packed += [pack_signed(Rb[g, k], b) for g in fit.target_groups for k in range(d)]
    shares = Q[: len(packed)].add_encoded(packed, n_jobs=ctx.n_jobs)
    fit.C = Q[: len(fit.coef_groups) * d]  # [[X_g^T S~ X_h]], kept here
    fit.b_masks = masks[n_coef * d :]
    neg_r = [pack_signed(-R[j, q], b) for j in range(n_coef) for q in fit.host_groups]
    neg_r = encrypt_integers(fit.private, neg_r, exponent=EXP_C, n_jobs=ctx.n_jobs)
    if fit.weighted:
        iu = np.triu_indices(d)
        pos = np.empty((d, d), dtype=np.int64)
        pos[iu] = np.arange(len(iu[0]))
        pos[iu[1], iu[0]] = np.arange(len(iu[0]))
        fit.G_enc = fit.gram_g_acc[pos.ravel()]  # [[X_h^T S~ X_h]], row-major
    fit.gram_acc = fit.gram_g_acc = None
    lam = np.full(d, fit.lam if fit.penalty == "l2" else 0.0)
    plain_gram = fit.X.T @ fit.X
    # Weighted: the host's own block needs S~, so its product comes back through the
    # guest; the preconditioner uses the unweighted block (any SPD matrix will do).
    fit.block = PCGBlock(None if fit.weighted else plain_gram, lam, fit.n, precond_gram=plain_gram)
    fit.expect = {"pcg"}
    msg = Message({"key": public_key_to_wire(fit.own)})
    msg.add_encrypted("shares", shares.rerandomise(n_jobs=ctx.n_jobs))
    msg.add_encrypted("neg_r", neg_r)
    return msg


def _pcg(ctx, fit, msg):
    d = fit.X.shape[1]
    active = msg.array("active", kind="i", ndim=1, low=0, high=fit.K)
    if len(active) == 0 or len(np.unique(active)) != len(active):
        raise BadMessageError("array 'active' must list distinct targets")
    target = msg.field("target", str, choices={"u", "x"})
    if not hasattr(fit.block, "b"):
        res = _residues(msg, "b", fit.guest_key, fit.K * d)
        B = np.asarray(decode(fit.b_masks.unmask(fit.guest_key, res), EXP_C))
        fit.block.start(B.reshape(fit.K, d).T / (2.0 * fit.n), fit.W)
        fit.b_masks = None
    elif "b" in msg.arrays:
        raise ConflictError("the right-hand side was already sent")
    alpha = msg.array("alpha", kind="f", shape=(len(active),), optional=True)
    beta = msg.array("beta", kind="f", shape=(len(active),), optional=True)
    if (alpha is None) != (beta is None):
        raise BadMessageError("send both 'alpha' and 'beta', or neither")
    if alpha is not None:
        a, b = np.zeros(fit.K), np.zeros(fit.K)
        a[active], b[active] = alpha, beta
        fit.block.update(a, b, active)
    v = fit.block.x[:, active] if target == "x" else fit.block.precondition(active)
    product = fit.C.matmul(len(fit.coef_groups), v, exponent=EXP_VEC, n_jobs=ctx.n_jobs)
    out = Message()
    out.add_encrypted("product", product.rerandomise(n_jobs=ctx.n_jobs))
    if fit.weighted:
        own = fit.G_enc.matmul(d, v, exponent=EXP_VEC, n_jobs=ctx.n_jobs)
        fit.masks = Masks(len(own), mask_bits(own.exponent))
        out.add_encrypted("own", fit.masks.apply(own, n_jobs=ctx.n_jobs))
        fit.pending = (v, active, target, own.exponent)
        fit.expect = {"pcg.cross"}
        return out
    k = len(active)
    cross = msg.encrypted(
        "cross", fit.own, length=len(fit.host_groups) * k, exponent=EXP_C + EXP_VEC
    )
    packed = decrypt_integers(fit.private, cross, n_jobs=ctx.n_jobs)
    values = np.empty((d, k), dtype=object)
    for i, q in enumerate(fit.host_groups):
        for c in range(k):
            values[q, c] = unpack_signed(packed[i * k + c], len(q), fit.slot_bits)
    cross = np.asarray(decode(values.ravel().tolist(), cross.exponent)).reshape(d, k)
    out.meta.update(_pcg_finish(fit, v, fit.block.own_product(v) + cross, active, target))
    return out


def _pcg_cross(ctx, fit, msg):
    v, active, target, exponent = fit.pending
    d = fit.X.shape[1]
    cross = msg.encrypted("cross", fit.own, length=d * len(active), exponent=exponent)
    values = fit.masks.unmask(fit.own, decrypt_raw(fit.private, cross, n_jobs=ctx.n_jobs))
    fit.masks = fit.pending = None
    total = np.asarray(decode(values, exponent)).reshape(d, len(active))
    return Message(_pcg_finish(fit, v, total, active, target))


def _pcg_finish(fit, v, product, active, target):
    fit.expect = {"pcg", "finish"}
    if target == "x":
        xbr = fit.block.finish(v, product, active, target="x")
        return {"xbr": xbr.tolist()}
    gamma, delta, rmax = fit.block.finish(v, product, active)
    fit.W = fit.block.x
    return {"gamma": gamma.tolist(), "delta": delta.tolist(), "rmax": rmax.tolist()}


# exact protocol, L-BFGS --------------------------------------------------------------------


def _penalised_scalars(fit, w, p=None):
    if fit.penalty == "none":
        return {"ww": 0.0, "wp": 0.0, "pp": 0.0}
    out = {"ww": float(w @ w)}
    if p is not None:
        out.update(wp=float(w @ p), pp=float(p @ p))
    return out


def _lam(fit):
    return fit.lam if fit.penalty == "l2" else 0.0


def _lbfgs_start(ctx, fit, msg):
    k = msg.field("target", int, minimum=0, maximum=fit.K - 1)
    fit.k = k
    fit.lbfgs = LbfgsBlock(fit.W[:, k], fit.memory)
    fit.expect = {"grad"}
    out = Message(_penalised_scalars(fit, fit.lbfgs.w))
    out.add_array("z", fit.X @ fit.lbfgs.w)
    return out


def _grad(ctx, fit, msg):
    step_size = msg.field("step", (int, float, type(None)), default=None)
    if step_size is not None:
        if fit.lbfgs.p is None or not np.isfinite(step_size):
            raise BadMessageError("'step' needs a direction and must be finite")
        with np.errstate(over="ignore", invalid="ignore"):
            moved = fit.lbfgs.w + float(step_size) * fit.lbfgs.p
            z = fit.X @ moved
        if not _all_finite(moved, z):
            raise BadMessageError("field 'step' is out of range: the coefficients overflow")
        fit.lbfgs.move(float(step_size))
        fit.W[:, fit.k] = fit.lbfgs.w
    d = msg.encrypted("d", fit.guest_key, length=fit.n, exponent=EXP_ENC)
    T = d.dot(fit.X, exponent=EXP_X, n_jobs=ctx.n_jobs)
    return _send_masked(ctx, fit, T, Message(), {"grad.unmask"})


def _send_masked(ctx, fit, T, out, expect):
    """Answer ``[[T + m]]`` (packed) for the guest to decrypt; keep the masks."""
    fit.masks = Masks(len(T), mask_bits(T.exponent), pack=True)
    fit.pending = T.exponent
    fit.expect = expect
    out.add_encrypted("masked", fit.masks.apply(T, n_jobs=ctx.n_jobs))
    return out


def _unmasked(fit, msg):
    """The values whose masked residues the guest sent back."""
    res = _residues(msg, "masked", fit.guest_key, _packed(fit, len(fit.masks)))
    values = np.asarray(decode(fit.masks.unmask(fit.guest_key, res), fit.pending))
    fit.masks = fit.pending = None
    return values


def _grad_unmask(ctx, fit, msg):
    g = _unmasked(fit, msg) + _lam(fit) * fit.lbfgs.w
    fit.lbfgs.set_gradient(g)
    fit.expect = {"lbfgs.direction", "lbfgs.start", "finish"}
    out = Message({"gmax": float(np.abs(g).max(initial=0.0)), "n_pairs": len(fit.lbfgs.S)})
    out.add_array("gram", fit.lbfgs.gram())
    return out


def _lbfgs_direction(ctx, fit, msg):
    m = len(fit.lbfgs.S)
    coefs = msg.array("coefs", kind="f", shape=(2 * m + 1,))
    previous = fit.lbfgs.p
    with np.errstate(over="ignore", invalid="ignore"):
        p = fit.lbfgs.direction(coefs)
        scalars = _penalised_scalars(fit, fit.lbfgs.w, p)
        dz = fit.X @ p
    if not _all_finite(p, dz, *scalars.values()):
        fit.lbfgs.p = previous
        raise BadMessageError(
            "array 'coefs' is out of range: the search direction it gives overflows float64"
        )
    # the guest steps along it (grad), or abandons it where the line search found no
    # decrease: for another direction, the next target or the end (w has not moved)
    fit.expect = {"grad", "lbfgs.direction", "lbfgs.start", "finish"}
    out = Message(scalars)
    out.add_array("dz", dz)
    return out


def _all_finite(*values):
    return all(np.isfinite(v).all() for v in values)


# SGD, both protocols -----------------------------------------------------------------------


def _sgd_scores(ctx, fit, msg):
    rows = _rows(msg, fit)
    out = Message()
    out.add_array("z", fit.X[rows] @ fit.W)
    return out


def _sgd_grad(ctx, fit, msg):
    rows = _rows(msg, fit)
    m, K, Xr = len(rows), fit.K, fit.X[rows]
    if fit.protocol == "exact":
        d = msg.encrypted("d", fit.guest_key, length=m * K, exponent=EXP_ENC)
        T = d.matmul(K, Xr, exponent=EXP_X, n_jobs=ctx.n_jobs)  # (class, host column)
        return _send_masked(ctx, fit, T, Message(), {"sgd.update"})
    eval_only = msg.field("eval_only", bool, default=False)
    a_exp = EXP_ENC + EXP_VEC
    a_g = _columns(msg.encrypted("a", fit.guest_key, length=m * K, exponent=a_exp), K)
    a_h = Xr @ fit.W / 4.0  # the host's part of the Taylor residual z/4 - y'/2
    if fit.weighted:
        sw = msg.encrypted("sw", fit.guest_key, length=m, exponent=EXP_ENC)
    v, loss = [], []
    for k in range(K):
        if fit.weighted:
            mine = sw.multiply(a_h[:, k], exponent=EXP_VEC, n_jobs=ctx.n_jobs)
            vk = a_g[k].add(mine)
        else:
            vk = a_g[k].add(a_h[:, k] / m)
        v.append(vk)
        both = EncryptedArray.concat([vk, a_g[k]])
        loss.append(both.dot(np.concatenate([a_h[:, k], a_h[:, k]]), exponent=EXP_VEC))
    out = Message({"key": public_key_to_wire(fit.own)})
    out.add_encrypted("loss", EncryptedArray.concat(loss).rerandomise(n_jobs=ctx.n_jobs))
    if eval_only:
        return out
    T = EncryptedArray.concat(v).matmul(K, Xr, exponent=EXP_X, n_jobs=ctx.n_jobs)
    out.add_encrypted("own", encrypt(fit.private, a_h.T.ravel(), exponent=EXP_ENC))
    return _send_masked(ctx, fit, T, out, {"sgd.update"})


def _sgd_update(ctx, fit, msg):
    d, K = fit.X.shape[1], fit.K
    g = _unmasked(fit, msg).reshape(K, d).T
    sgd_update(fit.W, g, fit.eta, slice(None), fit.penalty, fit.lam)
    out = Message({"penalty": penalty_value(fit.W, slice(None), fit.penalty, fit.lam).tolist()})
    if fit.protocol == "taylor":
        n_guest = msg.field("n_guest", int, minimum=1, maximum=100_000)
        cross = msg.encrypted("cross", fit.own)
        if not 1 <= len(cross) <= n_guest * K:
            raise BadMessageError("ciphertext array 'cross' has a wrong length")
        out.add_array("cross", residues_to_bytes(fit.own, decrypt_raw(fit.private, cross)))
        fit.expect = {"sgd.grad", "finish"}
    else:
        if "rows" in msg.arrays:
            out.add_array("z", fit.X[_rows(msg, fit)] @ fit.W)
        fit.expect = {"sgd.grad", "sgd.scores", "finish"}
    return out


# end of a fit ------------------------------------------------------------------------------


def _finish(ctx, fit, msg):
    if fit.solver == "pcg":
        fit.W = fit.block.x
    model_id = ctx.models.create(ctx.session.peer, MODEL_KIND)
    meta = {
        "kind": MODEL_KIND,
        "dataset": ctx.session.dataset,
        "protocol": fit.protocol,
        "n_features": int(fit.X.shape[1]),
        "columns": ctx.dataset.columns,  # (host-side: prediction follows them by name)
        "n_targets": int(fit.K),
    }
    ctx.models.save(
        model_id, ctx.session.peer, meta, {"coef": np.asarray(fit.W), "means": fit.means}
    )
    fit.expect = set()
    if fit.protocol == "taylor":
        _prepare_keypair(fit.own.key_length)  # for this peer's next fit, while idle
    ops = {k: int(v) for k, v in fit.ops.items()}
    del ctx.session.state["linear"]
    return Message({"model_id": model_id, "ops": ops})


_STEPS = {
    "gram": _gram,
    "pcg": _pcg,
    "pcg.cross": _pcg_cross,
    "lbfgs.start": _lbfgs_start,
    "grad": _grad,
    "grad.unmask": _grad_unmask,
    "lbfgs.direction": _lbfgs_direction,
    "sgd.scores": _sgd_scores,
    "sgd.grad": _sgd_grad,
    "sgd.update": _sgd_update,
    "finish": _finish,
}


# -- prediction --------------------------------------------------------------------------------


@_guard
def scores(ctx, msg):
    """Partial scores ``X_h w_h`` of the aligned rows from a stored model (no encryption)."""
    model_id = msg.field("model_id", str)
    meta, arrays = ctx.models.load(model_id, ctx.session.peer)
    if meta.get("kind") != MODEL_KIND or "coef" not in arrays:
        raise BadMessageError(f"model {model_id} is not a logistic regression model")
    if meta.get("dataset") != ctx.session.dataset:
        raise ConflictError(
            f"model {model_id} was trained on dataset {meta.get('dataset')!r}, "
            f"not on {ctx.session.dataset!r}"
        )
    coef = np.asarray(arrays["coef"], dtype=np.float64)
    columns = model_columns(meta, ctx.dataset, model_id)
    if coef.shape[0] != len(columns):
        raise ConflictError(f"model {model_id} does not match this dataset's columns")
    rows = aligned_rows(ctx)
    X, _ = prepare_features(ctx.dataset.X[np.ix_(rows, columns)], arrays.get("means"))
    out = Message()
    out.add_array("scores", X @ coef)
    return out
