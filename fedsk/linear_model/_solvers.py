"""The three optimisers, written once for plaintext and federated fits.

Each driver (:func:`pcg`, :func:`lbfgs`, :func:`sgd`) talks to a *system*: an object
that knows where the coordinates live. The plaintext systems here hold every column
in this process; the federated systems in :mod:`._protocol` hold the guest's columns
and reach the hosts' through the party servers. The drivers only ever see what the
guest may see (step sizes, sums of per-party scalars, losses), so a federated fit runs
exactly the iterations of a plaintext fit on the joined columns with the same blocks.
"""

import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from .._progress import progress_bar
from ._core import (
    LOG2,
    LbfgsBlock,
    PCGBlock,
    lbfgs_coefficients,
    loss_and_residual,
    penalty_value,
    sgd_update,
)

__all__ = [
    "FitOutcome",
    "LineFunction",
    "PlainLbfgs",
    "PlainSgd",
    "PlainTaylorPCG",
    "Problem",
    "SolverResult",
    "lbfgs",
    "pcg",
    "plain_fit",
    "sgd",
    "taylor_block",
]

FTOL = 64 * np.finfo(float).eps  # scikit-learn's relative-reduction tolerance for L-BFGS
LBFGS_TIGHTEN = 100.0  # L-BFGS iterates on until max|grad| <= tol / LBFGS_TIGHTEN
DIVERGED = 2.0  # sgd: an epoch loss above DIVERGED x the best loss so far is divergence
STANDARDISE = (
    "standardise the columns (e.g. StandardScaler in a Pipeline; a host standardises "
    "its own columns)"
)


class SolverResult:
    """What a driver returns: iterations per target, loss curve, convergence.

    ``message`` says why a driver stopped without converging, when the reason is not
    simply ``max_iter`` (a stalled L-BFGS, a diverging SGD); the estimator warns with it.
    """

    def __init__(self, n_iter, loss_curve, converged, message=None):
        self.n_iter = np.atleast_1d(np.asarray(n_iter, dtype=np.int32))
        self.loss_curve = [float(v) for v in loss_curve]
        self.converged = bool(converged)
        self.message = message


class _Progress:
    """What ``verbose`` shows: 1, a progress bar over the iterations; 2 and more, also
    one line per iteration with the loss."""

    def __init__(self, verbose, total, unit):
        self.verbose = verbose
        self.bar = progress_bar(verbose, total, desc="FederatedLogisticRegression", unit=unit)

    def __call__(self, text, loss):
        self.bar.set_postfix(loss=f"{loss:.6g}", refresh=False)
        self.bar.update(1)
        if self.verbose >= 2:
            print(text, flush=True)


def _reports_progress(unit):
    """Give a solver ``say(text, loss)`` for each iteration, from ``verbose``/``max_iter``."""

    def wrap(solver):
        @functools.wraps(solver)
        def run(*args, max_iter, verbose=0, **kwargs):
            say = _Progress(verbose, max_iter, unit)
            try:
                return solver(*args, max_iter=max_iter, say=say, **kwargs)
            finally:
                say.bar.close()

        return run

    return wrap


# -- preconditioned conjugate gradient (Taylor loss) ---------------------------------------


@_reports_progress("iter")
def pcg(system, *, tol, max_iter, say):
    """Chronopoulos-Gear PCG on all targets at once: one reduction per iteration.

    Stops a target when ``max|r| <= tol`` (``r = b - A x`` is minus the gradient of the
    Taylor objective: scikit-learn's L-BFGS criterion). The objective decreases by
    ``alpha * (r.u) / 2`` at each step, which gives the loss curve from the scalars.
    """
    gamma, delta, rmax, f = system.start()
    K = len(gamma)
    alpha, beta = np.zeros(K), np.zeros(K)
    active = rmax > tol
    ok = active & (gamma > 0) & (delta > 0)
    alpha[ok] = gamma[ok] / delta[ok]
    active &= ok
    n_iter = np.zeros(K, dtype=np.int32)
    curve = [f.sum()]
    it = 0
    while active.any() and it < max_iter:
        idx = np.flatnonzero(active)
        f[idx] -= alpha[idx] * gamma[idx] / 2.0
        g_new, d_new, r_new = system.iterate(alpha, beta, idx)
        it += 1
        n_iter[idx] += 1
        curve.append(f.sum())
        say(f"Iteration {it}, loss = {curve[-1]:.10f}, max|grad| = {r_new.max():.3g}", curve[-1])
        for j, k in enumerate(idx):
            rmax[k] = r_new[j]
            if r_new[j] <= tol or g_new[j] <= 0:
                active[k] = False
                continue
            b = g_new[j] / gamma[k]
            denom = d_new[j] - b * g_new[j] / alpha[k]
            if not np.isfinite(denom) or denom <= 0:
                active[k] = False  # breakdown: the solution is as good as arithmetic allows
                continue
            alpha[k], beta[k], gamma[k] = g_new[j] / denom, b, g_new[j]
    # A target stops when its residual is below tol or CG breaks down (the residual is
    # then as small as the arithmetic allows); only max_iter leaves targets active.
    return SolverResult(n_iter, curve, not active.any())


def taylor_block(X, sw, Y, lam, x0, *, blocks=None):
    """The Gram ``X^T S~ X`` and a started :class:`PCGBlock` for columns ``X``."""
    n = float(sw.sum())
    gram = X.T @ (sw[:, None] * X)
    block = PCGBlock(gram, lam, n, blocks=blocks)
    block.start(X.T @ (sw[:, None] * (2.0 * Y - 1.0)) / (2.0 * n), x0)
    return gram, block


class PlainTaylorPCG:
    """Every column in this process; block-Jacobi blocks as given (default: one).

    Parameters
    ----------
    X : ndarray (n, d)
        Features, with the intercept column if any.
    sw : ndarray (n,)
        Sample weights normalised to mean 1.
    Y : ndarray (n, K)
        Targets in {0, 1}.
    lam : ndarray (d,)
        Penalty per coordinate.
    x0 : ndarray (d, K)
    blocks : list of index arrays, default=None
        Block-Jacobi blocks; a federated fit uses one block per party.
    """

    def __init__(self, X, sw, Y, lam, x0, *, blocks=None):
        self.gram, self.block = taylor_block(X, sw, Y, lam, x0, blocks=blocks)

    def start(self):
        block = self.block
        K = block.b.shape[1]
        every = np.arange(K)
        f = np.full(K, LOG2)
        if np.any(block.x):
            f -= block.finish(block.x, self.gram @ block.x, every, target="x") / 2.0
        u = block.precondition(every)
        gamma, delta, rmax = block.finish(u, self.gram @ u, every)
        return gamma, delta, rmax, f

    def iterate(self, alpha, beta, active):
        self.block.update(alpha, beta, active)
        u = self.block.precondition(active)
        return self.block.finish(u, self.gram @ u, active)

    def coef(self):
        return self.block.x


# -- L-BFGS (exact loss) -------------------------------------------------------------------


class LineFunction:
    """``phi(t) = f(w + t p)`` and its derivative from ``z``, ``dz = X p`` and three scalars.

    ``quad = (sum lam w^2, sum lam w.p, sum lam p^2)`` over the penalised coordinates of
    every party: with them the guest evaluates the exact objective along the line
    without any further exchange.
    """

    def __init__(self, z, dz, y, sw, quad):
        self.z, self.dz, self.y, self.sw = z, dz, y, sw
        self.n = float(sw.sum())
        self.quad = tuple(float(q) for q in quad)
        self._cache = {}

    def __call__(self, t):
        t = float(t)
        if t not in self._cache:
            zt = (self.z + t * self.dz)[:, None]
            loss, res = loss_and_residual(zt, self.y[:, None], self.sw, "exact")
            a, b, c = self.quad
            phi = loss[0] / self.n + 0.5 * (a + 2 * t * b + t * t * c)
            dphi = res[:, 0] @ self.dz / self.n + b + t * c
            self._cache[t] = (float(phi), float(dphi))
        return self._cache[t]


def line_search(line):
    """A step satisfying the strong Wolfe conditions (scipy), else Armijo backtracking."""
    phi0, dphi0 = line(0.0)
    if not dphi0 < 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optimize.OptimizeWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        found = optimize.line_search(
            lambda x: line(x[0])[0],
            lambda x: np.array([line(x[0])[1]]),
            np.zeros(1),
            np.ones(1),
            gfk=np.array([dphi0]),
            old_fval=phi0,
            c1=1e-4,
            c2=0.9,
            maxiter=30,
        )
    t = found[0]
    if t is not None and np.isfinite(t) and t > 0:
        return float(t)
    t = 1.0
    for _ in range(60):
        if line(t)[0] <= phi0 + 1e-4 * t * dphi0:
            return t
        t /= 2.0
    return None


@_reports_progress("iter")
def lbfgs(system, *, tol, max_iter, say):
    """Vector-free L-BFGS with a strong-Wolfe line search evaluated by the guest.

    Iterates until ``max|grad| <= tol / LBFGS_TIGHTEN`` (scikit-learn's ``gtol``
    criterion, a hundred times tighter: at ``gtol = tol`` the coefficients are still
    about 1% away from the optimum on standardised data), until ``max_iter``, or until
    it stalls: the relative decrease of the objective falls below ``64 * eps``
    (scikit-learn's ``ftol``) or the line search finds no decrease. A stall first
    retries once from the steepest-descent direction (the L-BFGS history can be what
    stalls on badly scaled columns). The fit counts as converged only if
    ``max|grad| <= tol`` when it stops; otherwise ``message`` says how far it got.
    """
    f, gmax, gram, m = system.start()
    target = tol / LBFGS_TIGHTEN
    curve, it, stalled, steepest = [f], 0, None, False
    while gmax > target and it < max_iter:
        coefs = lbfgs_coefficients(gram, m)
        if steepest:
            coefs = np.zeros(2 * m + 1)
            coefs[-1] = -1.0 / max(float(np.sqrt(gram[-1, -1])), 1e-300)
        line = system.direction(coefs)
        if not line(0.0)[1] < 0:  # not a descent direction: restart from -g
            coefs = np.zeros(2 * m + 1)
            coefs[-1] = -1.0
            line = system.direction(coefs)
        t = line_search(line)
        if t is None:
            stalled = "the line search found no decrease of the objective"
        else:
            f_new = line(t)[0]
            gmax, gram, m = system.step(t, f_new)
            it += 1
            curve.append(f_new)
            say(f"Iteration {it}, loss = {f_new:.10f}, max|grad| = {gmax:.3g}, t = {t:.3g}", f_new)
            small = (f - f_new) <= FTOL * max(abs(f), abs(f_new), 1.0)
            stalled = "the objective stopped decreasing" if small else None
            f = f_new
        if stalled is None:
            steepest = False
            continue
        if steepest or gmax <= tol:
            break  # retried already, or as converged as the arithmetic allows
        steepest = True  # retry once from the steepest-descent direction
    message = None
    if gmax > tol:
        why = f"{stalled}" if stalled is not None else f"max_iter={max_iter} was reached"
        message = (
            f"L-BFGS did not converge: it stopped after {it} iterations: {why} "
            f"while the largest gradient coordinate is still {gmax:.3g} > "
            f"tol={tol:g}, so the coefficients may not be at the optimum. Columns on "
            "very different scales slow L-BFGS down: "
            f"{STANDARDISE}; or increase max_iter."
        )
    return SolverResult(it, curve, gmax <= tol, message)


class PlainLbfgs:
    """One binary target, every column in this process."""

    def __init__(self, X, sw, y, lam, w0, *, memory=10):
        self.X, self.sw, self.y, self.lam = X, sw, y, np.asarray(lam, dtype=np.float64)
        self.n = float(sw.sum())
        self.block = LbfgsBlock(w0, memory)

    def _gradient(self):
        loss, res = loss_and_residual(self.z[:, None], self.y[:, None], self.sw, "exact")
        w = self.block.w
        g = self.X.T @ res[:, 0] / self.n + self.lam * w
        self.block.set_gradient(g)
        return float(np.abs(g).max(initial=0.0)), self.block.gram(), len(self.block.S)

    def start(self):
        w = self.block.w
        self.z = self.X @ w
        loss, _ = loss_and_residual(self.z[:, None], self.y[:, None], self.sw, "exact")
        f = loss[0] / self.n + 0.5 * float(self.lam @ (w * w))
        return (f, *self._gradient())

    def direction(self, coefs):
        p = self.block.direction(coefs)
        w, lam = self.block.w, self.lam
        self.dz = self.X @ p
        quad = (lam @ (w * w), lam @ (w * p), lam @ (p * p))
        return LineFunction(self.z, self.dz, self.y, self.sw, quad)

    def step(self, t, f):
        self.block.move(t)
        self.z = self.z + t * self.dz
        return self._gradient()

    def coef(self):
        return self.block.w


# -- mini-batch SGD ------------------------------------------------------------------------


@_reports_progress("epoch")
def sgd(
    system,
    *,
    sw,
    train,
    validation,
    batch_size,
    max_iter,
    tol,
    n_iter_no_change,
    rng,
    say,
    start_loss=None,
    learning_rate=None,
):
    """Mini-batch (proximal) gradient descent, epochs as iterations.

    Each epoch shuffles the training rows and takes one step per batch. It stops, as
    scikit-learn's SGD does, after ``n_iter_no_change`` epochs without the loss (or,
    with ``validation`` rows, the validation loss) improving by ``tol``.

    It also stops, not converged, when the steps diverge: an epoch's loss (the mean of
    its mini-batch losses) is not finite or above ``DIVERGED`` times the best of
    ``start_loss`` (the objective at the start, when the caller knows it) and the
    earlier epochs' losses. Only the guest's own loss values decide this.
    """
    train = np.asarray(train)
    sw_train = float(sw[train].sum())
    best, bad, curve, converged = np.inf, 0, [], False
    lowest = np.inf if start_loss is None else float(start_loss)
    message = None
    epoch = 0
    for epoch in range(1, max_iter + 1):
        order = rng.permutation(train)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        total = 0.0
        with np.errstate(over="ignore", invalid="ignore"):
            for i, rows in enumerate(batches):
                nxt = batches[i + 1] if i + 1 < len(batches) else None
                total = total + system.step(rows, nxt)
            loss = float((total / sw_train + system.penalty()).sum())
        curve.append(loss)
        if not np.isfinite(loss) or loss > DIVERGED * lowest:
            rate = "" if learning_rate is None else f"={learning_rate:g}"
            message = (
                f"solver='sgd' did not converge, it diverged: the epoch loss rose "
                f"to {loss:.3g} at epoch {epoch} (best so far {lowest:.3g}); the "
                f"steps of learning_rate{rate} are too large for these columns. The "
                f"coefficients are not usable: {STANDARDISE}, "
                "or lower learning_rate."
            )
            break
        lowest = min(lowest, loss)
        score = loss
        if validation is not None and len(validation):
            score = float((system.validation_loss(validation) + system.penalty()).sum())
        say(f"Epoch {epoch}, loss = {loss:.10f}, stopping score = {score:.10f}", loss)
        if tol is not None and score > best - tol:
            bad += 1
        else:
            bad = 0
        best = min(best, score)
        if tol is not None and bad >= n_iter_no_change:
            converged = True
            break
    return SolverResult(epoch, curve, converged, message)


class PlainSgd:
    """Every column in this process; all targets at once."""

    def __init__(self, X, sw, Y, W0, *, protocol, penalty, lam, penalised, learning_rate):
        self.X, self.sw, self.Y = X, sw, Y
        self.W = np.array(W0, dtype=np.float64)
        self.protocol, self.penalty_name, self.lam = protocol, penalty, lam
        self.penalised, self.eta = penalised, learning_rate

    def _loss(self, rows):
        z = self.X[rows] @ self.W
        return loss_and_residual(z, self.Y[rows], self.sw[rows], self.protocol)

    def step(self, rows, next_rows=None):
        loss, res = self._loss(rows)
        g = self.X[rows].T @ res / self.sw[rows].sum()
        sgd_update(self.W, g, self.eta, self.penalised, self.penalty_name, self.lam)
        return loss

    def penalty(self):
        return penalty_value(self.W, self.penalised, self.penalty_name, self.lam)

    def validation_loss(self, rows):
        return self._loss(rows)[0] / self.sw[rows].sum()

    def coef(self):
        return self.W


# -- what the estimator hands to a fit -----------------------------------------------------


@dataclass
class Problem:
    """A validated fit problem on the guest's side (all of it plain numpy)."""

    X: np.ndarray  # (n, d) guest columns, the intercept column last if fitted
    sw: np.ndarray  # (n,) sample weights normalised to mean 1
    Y: np.ndarray  # (n, K) binary targets, one column per one-vs-rest problem
    protocol: str
    solver: str
    penalty: str  # "l2", "l1" or "none"
    lam: float  # 1 / (C * sum of the original weights)
    penalised: np.ndarray  # (d,) bool: which coordinates the penalty applies to
    x0: np.ndarray  # (d, K) starting coefficients
    intercept: bool
    weighted: bool
    tol: float
    max_iter: int
    batch_size: int
    learning_rate: float
    train: np.ndarray
    validation: np.ndarray | None
    n_iter_no_change: int
    rng: np.random.Generator
    verbose: int = 0
    memory: int = 10

    @property
    def lam_vec(self):
        """Per-coordinate l2 strength (0 for unpenalised coordinates and for l1)."""
        return np.where(self.penalised, self.lam if self.penalty == "l2" else 0.0, 0.0)

    @property
    def n_targets(self):
        return self.Y.shape[1]


@dataclass
class FitOutcome:
    coef: np.ndarray  # (d, K) guest coefficients
    n_iter: np.ndarray
    loss_curve: list
    converged: bool
    message: str | None = None  # why it stopped unconverged, if not max_iter
    host_models: dict = field(default_factory=dict)
    n_host_features: dict = field(default_factory=dict)
    ops: dict = field(default_factory=dict)


def run_sgd(problem, system, *, cold=True):
    """Run :func:`sgd` on ``system``; ``cold``: every party starts from zero coefficients
    (the starting objective is then ``log 2`` per target, for both losses)."""
    cold = cold and not np.any(problem.x0)
    return sgd(
        system,
        sw=problem.sw,
        train=problem.train,
        validation=problem.validation,
        batch_size=problem.batch_size,
        max_iter=problem.max_iter,
        tol=problem.tol,
        n_iter_no_change=problem.n_iter_no_change,
        rng=problem.rng,
        verbose=problem.verbose,
        start_loss=LOG2 * problem.n_targets if cold else None,
        learning_rate=problem.learning_rate,
    )


def combine(results):
    """One SolverResult from the per-target results of sequential one-vs-rest fits."""
    n_iter = np.concatenate([r.n_iter for r in results])
    longest = max(len(r.loss_curve) for r in results)
    curve = np.zeros(longest)
    for r in results:
        c = np.asarray(r.loss_curve)
        curve += np.concatenate([c, np.full(longest - len(c), c[-1])])
    messages = [r.message for r in results if r.message]
    message = None
    if messages:
        message = messages[0]
        if len(results) > 1:
            message = (
                f"one-vs-rest problem {[r.message for r in results].index(message)}: " + message
            )
    return SolverResult(n_iter, curve, all(r.converged for r in results), message)


def plain_fit(problem, *, blocks=None):
    """Fit in plaintext on the columns given: the same drivers as a federated fit."""
    p = problem
    if p.solver == "pcg":
        system = PlainTaylorPCG(p.X, p.sw, p.Y, p.lam_vec, p.x0, blocks=blocks)
        result = pcg(system, tol=p.tol, max_iter=p.max_iter, verbose=p.verbose)
        coef = system.coef()
    elif p.solver == "lbfgs":
        results, coef = [], np.zeros_like(p.x0)
        for k in range(p.n_targets):
            system = PlainLbfgs(p.X, p.sw, p.Y[:, k], p.lam_vec, p.x0[:, k], memory=p.memory)
            results.append(lbfgs(system, tol=p.tol, max_iter=p.max_iter, verbose=p.verbose))
            coef[:, k] = system.coef()
        result = combine(results)
    else:
        system = PlainSgd(
            p.X,
            p.sw,
            p.Y,
            p.x0,
            protocol=p.protocol,
            penalty=p.penalty,
            lam=p.lam,
            penalised=p.penalised,
            learning_rate=p.learning_rate,
        )
        result = run_sgd(p, system)
        coef = system.coef()
    return FitOutcome(
        np.array(coef), result.n_iter, result.loss_curve, result.converged, result.message
    )
