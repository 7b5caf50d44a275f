"""The guest half of the federated protocols: who sends what, and in which order.

The systems here present the hosts' coordinates to the drivers of :mod:`._solvers`
exactly as the plaintext systems present theirs; the host half is
:mod:`._host`. Notation: ``[[v]]_g`` is encrypted under the guest's key, ``[[v]]_h``
under the host's; ``X~`` are the guest's columns with the intercept, ``S~`` the
normalised sample weights, ``n`` the number of aligned rows.

``taylor`` + PCG (one host; each party holds its own key):

1. setup: the guest encrypts ``Z = S~ [X~, Y']`` once, ``P`` columns per plaintext in
   signed slots (:func:`~fedsk.crypto.pack_signed`; ``P`` from :func:`._core.slot_layout`,
   about 10 for 2048-bit keys), and sends it in row chunks; the host computes
   ``[[Z^T X_h]]_g`` by multi-exponentiation (one scalar acts on every slot) and keeps
   ``[[C]]_g``, ``C = X~^T S~ X_h``; it adds random masks ``R`` (shares) and sends
   ``[[C + R]]_g``, ``[[B + R_b]]_g`` (``B = Y'^T S~ X_h``), and ``[[-R]]_h`` packed along
   its own columns, with its public key. The guest decrypts its shares; it returns
   ``B + R_b`` with the first iteration and the host removes ``R_b``: the host's
   right-hand side ``b_h``.
2. each CG iteration is one round trip: the guest sends the step sizes and
   ``[[C^T u_g]]_h = [[-R]]_h^T u_g + (C + R)^T u_g`` (packed); the host decrypts it
   (its own product), updates its block and answers ``[[C u_h]]_g`` (packed, from
   ``[[C]]_g``), which the guest decrypts (its own product), and its scalars ``r.u``,
   ``w.u``, ``max|r|``. With sample weights nothing is packed, the host's own block
   ``X_h^T S~ X_h`` is also encrypted (from the weights' column), and its product comes
   back through the guest, masked, in a second round trip, so that the host only ever
   sees its total product.

``exact`` + L-BFGS (one or more hosts; only the guest has a key): per iteration each
host sends ``X_h p_h`` for the search direction (and ``X_h w_0`` at the start), the
guest line-searches the exact objective locally, sends ``[[S~ (sigma(z) - y) / n]]_g``;
each host returns ``[[X_h^T d + m]]_g`` (masked), the guest decrypts and returns the
masked values, the host unmasks its gradient and answers the Gram matrix of its
L-BFGS basis, from which the guest computes the direction's coefficients.

``sgd``: the same masked gradient exchange on each mini-batch (for ``taylor`` also in
the other direction, with the host's ``[[X_h w_h / 4]]_h``).
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..crypto import (
    EncryptedArray,
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
from ..exceptions import BadMessageError, ProtocolError
from ..federation import (
    Message,
    aligned_sessions,
    keyed_sessions,
    public_key_from_wire,
    public_key_to_wire,
)
from ._core import (
    EXP_C,
    EXP_ENC,
    EXP_VEC,
    EXP_X,
    EXP_Z,
    LOG2,
    MAX_Z_BITS,
    LbfgsBlock,
    loss_and_residual,
    mask_bits,
    penalty_value,
    sgd_update,
    slot_groups,
    slot_layout,
)
from ._solvers import FitOutcome, LineFunction, combine, lbfgs, pcg, run_sgd, taylor_block

__all__ = ["federated_fit", "federated_scores"]

CHUNK_BYTES = 32 * 1024 * 1024  # ciphertext bytes per message of the Gram setup


class HostPeer:
    """One host's session during a fit."""

    def __init__(self, session):
        self.session = session
        self.name = session.name
        self.n_features = 0
        self.key = None

    def setup(self, meta, key_length):
        answer = self.session.call("logistic.setup", Message(meta))
        self.n_features = answer.field("n_features", int, minimum=1)
        self.warm = answer.field("warm_start", bool, default=False)
        self.key_length = key_length
        return answer

    def learn_key(self, answer):
        """The host's own public key (``taylor``), sent with its first ciphertexts."""
        key = public_key_from_wire(answer.field("key", dict), min_key_length=self.key_length)
        if self.key is not None and key != self.key:
            raise ProtocolError(f"host {self.name!r} changed its key during a fit")
        self.key = key
        return key

    def step(self, op, meta=None, *, arrays=None, encrypted=None):
        msg = Message({"op": op, **(meta or {})}, arrays=arrays)
        for name, enc in (encrypted or {}).items():
            msg.add_encrypted(name, enc)
        return self.session.call("logistic.step", msg)


def _each(peers, fn):
    """``[fn(peer) for peer in peers]``, the hosts served concurrently when several."""
    if len(peers) < 2:
        return [fn(peer) for peer in peers]
    with ThreadPoolExecutor(max_workers=len(peers), thread_name_prefix="fedsk-host") as pool:
        return list(pool.map(fn, peers))


def _floats(msg, name, length):
    values = msg.field(name, list)
    if len(values) != length or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise BadMessageError(f"field {name!r} must be a list of {length} numbers")
    out = np.asarray(values, dtype=np.float64)
    if not np.isfinite(out).all():
        raise BadMessageError(f"field {name!r} must be finite")
    return out


def _check_range(values, what, bits=32):
    top = float(np.abs(values).max(initial=0.0))
    if not top < 2.0**bits:
        raise ValueError(
            f"{what} reach {top:.3g}; the encrypted protocols need values below 2**{bits}. "
            "Standardise the features (e.g. StandardScaler) and keep sample weights moderate."
        )


def _packed(count, exponent, key):
    """Ciphertexts of ``count`` masked values at ``exponent``, packed by their masker."""
    return Masks.packed_length(count, mask_bits(exponent), key.key_length)


def _fixed(values, exponent):
    """Float values as int64 fixed-point integers (as the multi-exponentiations encode)."""
    return np.rint(np.ldexp(np.asarray(values, dtype=np.float64), -4 * exponent)).astype(np.int64)


def _unpack(value, count, bits):
    try:
        return unpack_signed(value, count, bits)
    except ValueError as exc:
        raise ProtocolError(f"a decrypted value does not fit its slots: {exc}") from None


# -- taylor: PCG on the shared Gram --------------------------------------------------------


class TaylorPCG:
    """The guest's block plus one host, for the PCG driver."""

    def __init__(self, peer, keys, problem, *, n_jobs):
        p = problem
        self.peer, (self.pub, self.priv), self.p = peer, keys, p
        self.n_jobs = n_jobs
        self.gram, self.block = taylor_block(p.X, p.sw, p.Y, p.lam_vec, p.x0)
        self.d_h = peer.n_features
        self.b_share = None

    # setup: the shared Gram ----------------------------------------------------------------
    def _gram(self):
        p, d_g, d_h, K = self.p, self.p.X.shape[1], self.d_h, self.p.n_targets
        P, b = slot_layout(len(p.X), max(d_g, d_h, K), self.pub.key_length, p.weighted)
        self.slot_bits = b
        self.coef_groups, self.host_groups = slot_groups(d_g, P), slot_groups(d_h, P)
        target_groups = slot_groups(K, P)
        Zx, Zy = p.sw[:, None] * p.X, p.sw[:, None] * (2.0 * p.Y - 1.0)
        _check_range(np.hstack([Zx, Zy]), "weighted guest features", bits=MAX_Z_BITS)
        # one packed column per group of guest columns (+ the weights alone if weighted)
        columns = [(Zx, g) for g in self.coef_groups] + [(Zy, g) for g in target_groups]
        if p.weighted:
            columns.append((p.sw[:, None], np.arange(1)))
        ints = [_fixed(Z[:, g], EXP_Z) for Z, g in columns]
        n = len(p.X)
        chunk = max(1, CHUNK_BYTES // (len(columns) * self.pub.ciphertext_bytes))
        meta = {"n_coef": d_g, "slots": P, "slot_bits": b}
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            packed = [pack_signed(row, b) for q in ints for row in q[start:stop].tolist()]
            enc = encrypt_integers(self.priv, packed, exponent=EXP_Z, n_jobs=self.n_jobs)
            answer = self.peer.step("gram", {**meta, "start": start}, encrypted={"z": enc})
        n_shares = (len(self.coef_groups) + len(target_groups)) * d_h
        shares = answer.encrypted("shares", self.pub, length=n_shares, exponent=EXP_C)
        host_key = self.peer.learn_key(answer)
        neg_r = answer.encrypted(
            "neg_r", host_key, length=d_g * len(self.host_groups), exponent=EXP_C
        )
        packed = decrypt_raw(self.priv, shares, n_jobs=self.n_jobs)
        share = np.empty((d_g + K, d_h), dtype=object)  # [C + R; B + R_b], masked
        for i, g in enumerate(self.coef_groups + [d_g + t for t in target_groups]):
            for k in range(d_h):
                share[g, k] = _unpack(packed[i * d_h + k], len(g), b)
        self.c_share = share[:d_g]
        self.b_share = share[d_g:].ravel().tolist()
        n_hg = len(self.host_groups)
        self.neg_r_t = neg_r[[j * n_hg + q for q in range(n_hg) for j in range(d_g)]]

    def _cross(self, v):
        """``[[C^T v]]_h`` (packed by host column groups) and the exact integers added."""
        enc = self.neg_r_t.matmul(len(self.host_groups), v, exponent=EXP_VEC, n_jobs=self.n_jobs)
        ints = np.array(encode(v.ravel(), EXP_VEC, self.pub.max_int), dtype=object)
        plain = self.c_share.T @ ints.reshape(v.shape)  # (C + R)^T v, (d_h x k)
        return enc, plain

    def _matvec(self, alpha, beta, active, target):
        block, k, b = self.block, len(active), self.slot_bits
        v = block.x[:, active] if target == "x" else block.precondition(active)
        meta = {"target": target}
        arrays = {"active": np.asarray(active, dtype=np.int64)}
        if alpha is not None:
            arrays.update(alpha=np.asarray(alpha, float), beta=np.asarray(beta, float))
        if self.b_share is not None:
            arrays["b"] = residues_to_bytes(self.pub, self.b_share)
            self.b_share = None
        enc, plain = self._cross(v)
        encrypted = {}
        if not self.p.weighted:
            packed = [pack_signed(plain[q, c], b) for q in self.host_groups for c in range(k)]
            encrypted["cross"] = enc.add_encoded(packed).rerandomise(n_jobs=self.n_jobs)
        answer = self.peer.step("pcg", meta, arrays=arrays, encrypted=encrypted)
        n_cg = len(self.coef_groups)
        product = answer.encrypted("product", self.pub, length=n_cg * k, exponent=EXP_C + EXP_VEC)
        packed = decrypt_integers(self.priv, product, n_jobs=self.n_jobs)
        cv = np.empty((v.shape[0], k), dtype=object)
        for i, g in enumerate(self.coef_groups):
            for c in range(k):
                cv[g, c] = _unpack(packed[i * k + c], len(g), b)
        cv = np.asarray(decode(cv.ravel().tolist(), product.exponent)).reshape(v.shape)
        if self.p.weighted:  # one slot per ciphertext: add the host's masked own product
            own = answer.encrypted("own", self.pub, length=self.d_h * k)
            if own.exponent > enc.exponent or own.exponent < enc.exponent - 16:
                raise BadMessageError("ciphertext array 'own' has an unexpected exponent")
            masked = decrypt_raw(self.priv, own, n_jobs=self.n_jobs)
            shift = 16 ** (enc.exponent - own.exponent)
            total = [a * shift + m for a, m in zip(plain.ravel().tolist(), masked)]
            cross = enc.rescale(own.exponent).add_encoded(total).rerandomise(n_jobs=self.n_jobs)
            answer = self.peer.step("pcg.cross", encrypted={"cross": cross})
        mine = block.finish(v, self.gram @ v + cv, active, target=target)
        if target == "x":
            return mine + _floats(answer, "xbr", k)
        gamma, delta, rmax = mine
        return (
            gamma + _floats(answer, "gamma", k),
            delta + _floats(answer, "delta", k),
            np.maximum(rmax, _floats(answer, "rmax", k)),
        )

    # the driver's interface -----------------------------------------------------------------
    def start(self):
        self._gram()
        K = self.p.n_targets
        every = np.arange(K)
        f = np.full(K, LOG2)
        if np.any(self.block.x) or self.peer.warm:
            f -= self._matvec(None, None, every, "x") / 2.0
        gamma, delta, rmax = self._matvec(None, None, every, "u")
        return gamma, delta, rmax, f

    def iterate(self, alpha, beta, active):
        self.block.update(alpha, beta, active)
        return self._matvec(alpha[active], beta[active], active, "u")

    def coef(self):
        return self.block.x


# -- exact: L-BFGS -------------------------------------------------------------------------


class ExactLbfgs:
    """The guest's block plus any number of hosts, one binary target ``k``."""

    def __init__(self, peers, keys, problem, k, *, n_jobs, stock=None):
        p = self.p = problem
        self.peers, (self.pub, self.priv), self.k, self.n_jobs = peers, keys, k, n_jobs
        self.stock = stock  # each iteration's gradient encryptions are made ahead
        self.y, self.n = p.Y[:, k], float(p.sw.sum())
        self.lam_g, self.lam_h = p.lam_vec, (p.lam if p.penalty == "l2" else 0.0)
        self.block = LbfgsBlock(p.x0[:, k], p.memory)

    def _packed(self, count):
        return _packed(count, EXP_ENC + EXP_X, self.pub)

    def start(self):
        w = self.block.w
        z, n = self.p.X @ w, len(self.y)

        def start(peer):
            answer = peer.step("lbfgs.start", {"target": int(self.k)})
            return answer.array("z", kind="f", shape=(n,)), answer.field("ww", (int, float))

        answers = _each(self.peers, start)
        z = z + sum(a[0] for a in answers)
        ww = sum(a[1] for a in answers)
        self.z = z
        loss, _ = loss_and_residual(z[:, None], self.y[:, None], self.p.sw, "exact")
        f = loss[0] / self.n + 0.5 * (self.lam_g @ (w * w) + self.lam_h * ww)
        return (f, *self._gradient(None))

    def _gradient(self, step):
        _, res = loss_and_residual(self.z[:, None], self.y[:, None], self.p.sw, "exact")
        d = res[:, 0] / self.n
        block = self.block
        g = self.p.X.T @ d + self.lam_g * block.w
        block.set_gradient(g)
        m = len(block.S)
        gmax, gram = float(np.abs(g).max(initial=0.0)), block.gram()
        enc = encrypt(self.priv, d, exponent=EXP_ENC, n_jobs=self.n_jobs, stock=self.stock)
        if self.stock is not None:  # the next iteration's, while the hosts answer
            self.stock.fill(len(d))

        def exchange(peer):
            answer = peer.step("grad", {"step": step}, encrypted={"d": enc})
            masked = answer.encrypted("masked", self.pub, length=self._packed(peer.n_features))
            res = decrypt_raw(self.priv, masked, n_jobs=self.n_jobs)
            answer = peer.step("grad.unmask", arrays={"masked": residues_to_bytes(self.pub, res)})
            if answer.field("n_pairs", int) != m:
                raise ProtocolError(f"host {peer.name!r} lost track of the L-BFGS history")
            host_gram = answer.array("gram", kind="f", shape=(2 * m + 1, 2 * m + 1))
            return host_gram, answer.field("gmax", (int, float), minimum=0)

        for host_gram, host_gmax in _each(self.peers, exchange):
            gram, gmax = gram + host_gram, max(gmax, host_gmax)
        return gmax, gram, m

    def direction(self, coefs):
        block = self.block
        p, w, lam = block.direction(coefs), block.w, self.lam_g
        dz = self.p.X @ p
        quad = np.array([lam @ (w * w), lam @ (w * p), lam @ (p * p)])

        def direction(peer):
            answer = peer.step("lbfgs.direction", arrays={"coefs": np.asarray(coefs, float)})
            scalars = [answer.field(f, (int, float)) for f in ("ww", "wp", "pp")]
            return answer.array("dz", kind="f", shape=(len(dz),)), np.asarray(scalars, float)

        for dz_h, scalars in _each(self.peers, direction):
            dz, quad = dz + dz_h, quad + self.lam_h * scalars
        self.dz = dz
        return LineFunction(self.z, dz, self.y, self.p.sw, quad)

    def step(self, t, f):
        self.block.move(t)
        self.z = self.z + t * self.dz
        return self._gradient(float(t))

    def coef(self):
        return self.block.w


# -- SGD ---------------------------------------------------------------------------------


class _SgdBase:
    def __init__(self, peers, keys, problem, *, n_jobs):
        self.p, self.peers, self.n_jobs = problem, peers, n_jobs
        self.pub, self.priv = keys
        self.W = np.array(problem.x0, dtype=np.float64)
        self.host_penalty = np.zeros(problem.n_targets)

    def _packed(self, count):
        return _packed(count, EXP_ENC + EXP_X, self.pub)

    def penalty(self):
        own = penalty_value(self.W, self.p.penalised, self.p.penalty, self.p.lam)
        return own + self.host_penalty

    def coef(self):
        return self.W


class ExactSgd(_SgdBase):
    """Mini-batch SGD on the exact loss; the hosts send their partial scores."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._next = {}

    def _host_scores(self, rows):
        K, rows = self.p.n_targets, np.asarray(rows, np.int64)

        def scores(peer):
            cached = self._next.pop(peer.name, None)
            if cached is not None and np.array_equal(cached[0], rows):
                return cached[1]
            answer = peer.step("sgd.scores", arrays={"rows": rows})
            return answer.array("z", kind="f", shape=(len(rows), K))

        return sum(_each(self.peers, scores))

    def step(self, rows, next_rows=None):
        p, K = self.p, self.p.n_targets
        z = p.X[rows] @ self.W + self._host_scores(rows)
        loss, res = loss_and_residual(z, p.Y[rows], p.sw[rows], "exact")
        res = res / p.sw[rows].sum()
        enc = encrypt(self.priv, res.T.ravel(), exponent=EXP_ENC, n_jobs=self.n_jobs)

        def exchange(peer):
            answer = peer.step(
                "sgd.grad", arrays={"rows": np.asarray(rows, np.int64)}, encrypted={"d": enc}
            )
            masked = answer.encrypted("masked", self.pub, length=self._packed(K * peer.n_features))
            arrays = {"masked": residues_to_bytes(self.pub, decrypt_raw(self.priv, masked))}
            if next_rows is not None:
                arrays["rows"] = np.asarray(next_rows, np.int64)
            answer = peer.step("sgd.update", arrays=arrays)
            if next_rows is not None:
                z_next = answer.array("z", kind="f", shape=(len(next_rows), K))
                self._next[peer.name] = (np.asarray(next_rows), z_next)
            return _floats(answer, "penalty", K)

        self.host_penalty = sum(_each(self.peers, exchange))
        sgd_update(self.W, p.X[rows].T @ res, p.learning_rate, p.penalised, p.penalty, p.lam)
        return loss

    def validation_loss(self, rows):
        p = self.p
        z = p.X[rows] @ self.W + self._host_scores(rows)
        return loss_and_residual(z, p.Y[rows], p.sw[rows], "exact")[0] / p.sw[rows].sum()


class TaylorSgd(_SgdBase):
    """Mini-batch SGD on the Taylor loss; partial scores cross only encrypted."""

    def _send(self, rows, eval_only):
        p, K = self.p, self.p.n_targets
        (peer,) = self.peers
        S = float(p.sw[rows].sum())
        a_g = p.X[rows] @ self.W / 4.0 - (2.0 * p.Y[rows] - 1.0) / 2.0
        _check_range(a_g, "Taylor residuals")
        scaled = p.sw[rows, None] * a_g / S
        a_exp = EXP_ENC + EXP_VEC
        encrypted = {"a": encrypt(self.priv, scaled.T.ravel(), exponent=a_exp, n_jobs=self.n_jobs)}
        if p.weighted:
            encrypted["sw"] = encrypt(
                self.priv, p.sw[rows] / S, exponent=EXP_ENC, n_jobs=self.n_jobs
            )
        answer = peer.step(
            "sgd.grad",
            {"eval_only": eval_only},
            arrays={"rows": np.asarray(rows, np.int64)},
            encrypted=encrypted,
        )
        peer.learn_key(answer)
        ell = decrypt(
            self.priv, answer.encrypted("loss", self.pub, length=K, exponent=a_exp + EXP_VEC)
        )
        # Taylor loss = log 2 - 1/2 + 2 v^2 with v = z/4 - y'/2 = a_g + a_h
        loss = S * (LOG2 - 0.5) + 2.0 * ((p.sw[rows, None] * a_g * a_g).sum(axis=0) + S * ell)
        return answer, loss, a_g, S

    def step(self, rows, next_rows=None):
        p, K = self.p, self.p.n_targets
        (peer,) = self.peers
        answer, loss, a_g, S = self._send(rows, False)
        n_masked = _packed(K * peer.n_features, EXP_ENC + EXP_VEC + EXP_X, self.pub)
        masked = answer.encrypted("masked", self.pub, length=n_masked)
        residues = decrypt_raw(self.priv, masked, n_jobs=self.n_jobs)
        own = answer.encrypted("own", peer.key, length=K * len(rows), exponent=EXP_ENC)
        Xs = p.sw[rows, None] * p.X[rows] / S
        m, d_g = len(rows), p.X.shape[1]
        cross = EncryptedArray.concat(
            [own[j * m : (j + 1) * m].dot(Xs, exponent=EXP_X, n_jobs=self.n_jobs) for j in range(K)]
        )
        masks = Masks(len(cross), mask_bits(cross.exponent), pack=True)
        answer = peer.step(
            "sgd.update",
            {"n_guest": d_g},
            arrays={"masked": residues_to_bytes(self.pub, residues)},
            encrypted={"cross": masks.apply(cross, n_jobs=self.n_jobs)},
        )
        back = answer.array("cross", kind="u", ndim=2)
        try:
            back = residues_from_bytes(peer.key, back)
        except ValueError as exc:
            raise ProtocolError(f"host {peer.name!r} sent bad residues: {exc}") from None
        try:
            cross_g = np.asarray(decode(masks.unmask(peer.key, back), cross.exponent))
        except ValueError as exc:
            raise ProtocolError(f"host {peer.name!r} sent bad residues: {exc}") from None
        self.host_penalty = _floats(answer, "penalty", K)
        g = p.X[rows].T @ (p.sw[rows, None] * a_g / S) + cross_g.reshape(K, d_g).T
        sgd_update(self.W, g, p.learning_rate, p.penalised, p.penalty, p.lam)
        return loss

    def validation_loss(self, rows):
        _, loss, _, S = self._send(rows, True)
        return loss / S


# -- a whole fit ------------------------------------------------------------------------------


def federated_fit(problem, federation, ids, *, key_length, n_jobs=None, warm_models=None):
    """Align, set up every host, run the solver, store the hosts' halves.

    Returns a :class:`~._solvers.FitOutcome`; the key pair lives only in this call.
    """
    p = problem
    if p.protocol == "taylor" and len(federation.hosts) != 1:
        raise NotImplementedError(
            f"protocol='taylor' works with exactly one host (this federation has "
            f"{len(federation.hosts)}); use protocol='exact' with several hosts"
        )
    with (
        count_ops() as guest_ops,
        keyed_sessions(
            federation,
            ids,
            protocol="logistic",
            key_length=key_length,
            n_jobs=n_jobs,
            ahead=len(ids) if p.solver == "lbfgs" else 0,
        ) as (sessions, keys, stock),
    ):
        peers = [HostPeer(s) for s in sessions]
        for peer in peers:
            peer.setup(
                {
                    "protocol": p.protocol,
                    "solver": p.solver,
                    "key": public_key_to_wire(keys[0]),
                    "n_rows": len(ids),
                    "n_targets": p.n_targets,
                    "penalty": p.penalty,
                    "lam": float(p.lam),
                    "learning_rate": float(p.learning_rate),
                    "memory": int(p.memory),
                    "weighted": bool(p.weighted),
                    "warm_start": (warm_models or {}).get(peer.name),
                },
                keys[0].key_length,
            )
        result, coef = _solve(p, peers, keys, n_jobs, stock)
        models, host_ops = {}, {}
        for peer in peers:
            answer = peer.step("finish")
            models[peer.name] = answer.field("model_id", str)
            host_ops[peer.name] = dict(answer.field("ops", dict, default={}))
    ops = {"guest": dict(guest_ops), **host_ops}
    return FitOutcome(
        np.array(coef),
        result.n_iter,
        result.loss_curve,
        result.converged,
        result.message,
        host_models=models,
        n_host_features={peer.name: peer.n_features for peer in peers},
        ops=ops,
    )


def _solve(p, peers, keys, n_jobs, stock=None):
    if p.solver == "pcg":
        system = TaylorPCG(peers[0], keys, p, n_jobs=n_jobs)
        return pcg(system, tol=p.tol, max_iter=p.max_iter, verbose=p.verbose), system.coef()
    if p.solver == "lbfgs":
        results, coef = [], np.zeros_like(p.x0)
        for k in range(p.n_targets):
            system = ExactLbfgs(peers, keys, p, k, n_jobs=n_jobs, stock=stock)
            results.append(lbfgs(system, tol=p.tol, max_iter=p.max_iter, verbose=p.verbose))
            coef[:, k] = system.coef()
        return combine(results), coef
    cls = TaylorSgd if p.protocol == "taylor" else ExactSgd
    system = cls(peers, keys, p, n_jobs=n_jobs)
    cold = not any(peer.warm for peer in peers)
    return run_sgd(p, system, cold=cold), system.coef()


def federated_scores(federation, ids, models, n_targets, *, n_jobs=None):
    """The hosts' partial scores ``X_h w_h`` for ``ids`` (one PSI + one call per host)."""
    total = np.zeros((len(ids), n_targets))
    with aligned_sessions(federation, ids, protocol="logistic", n_jobs=n_jobs) as sessions:
        names = sorted(s.name for s in sessions)
        if names != sorted(models):
            raise ValueError(
                f"this model was fitted with hosts {sorted(models)}, but the federation "
                f"has {names}; predict with the federation it was fitted with"
            )
        for s in sessions:
            answer = s.call("logistic.scores", Message({"model_id": models[s.name]}))
            total += answer.array("scores", kind="f", shape=(len(ids), n_targets))
    return total
