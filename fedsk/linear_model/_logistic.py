"""FederatedLogisticRegression: a thin estimator over the solvers and the protocols."""

import warnings
from numbers import Integral, Real

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.utils import check_random_state, compute_class_weight
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from .._labels import check_labels, encode_classes
from ..exceptions import ProtocolError
from ..federation import (
    Federation,
    check_federated_X,
    check_key_and_workers,
    columnless,
    unique_ids,
)
from ._core import MIN_X_BITS
from ._protocol import federated_fit, federated_scores
from ._solvers import Problem, plain_fit

__all__ = ["FederatedLogisticRegression"]

_VALID = {"taylor": ("pcg", "sgd"), "exact": ("lbfgs", "sgd")}


def _check_solver(penalty, solver, protocol, early_stopping):
    """The solver to use; a ValueError that names the valid combination otherwise."""
    if solver == "auto":
        if penalty == "l1" or early_stopping:
            return "sgd"
        return "pcg" if protocol == "taylor" else "lbfgs"
    if solver not in _VALID[protocol]:
        raise ValueError(
            f"solver={solver!r} does not work with protocol={protocol!r}: the 'taylor' "
            "protocol (a quadratic loss) uses solver 'pcg' or 'sgd', the 'exact' protocol "
            "uses 'lbfgs' or 'sgd'."
        )
    if penalty == "l1" and solver != "sgd":
        raise ValueError(
            f"Solver {solver} supports only 'l2' or None penalties, got l1 penalty; "
            "use solver='sgd' (proximal steps) for penalty='l1'."
        )
    if early_stopping and solver != "sgd":
        raise ValueError(
            f"early_stopping=True needs solver='sgd' (got solver={solver!r}); "
            f"solver {solver!r} stops on its gradient tolerance `tol`."
        )
    return solver


class FederatedLogisticRegression(LinearClassifierMixin, BaseEstimator):
    """Logistic regression on columns split between a guest and its hosts.

    The guest (the party running this estimator) holds the labels and the columns of
    ``X``; each host of ``federation`` holds more columns for the same sample IDs.
    Every cross-party step of a fit is Paillier-encrypted; the hosts keep their
    coefficients in their own model store, the guest sees only how many there are.
    Binary and multi-class (one-vs-rest) targets.

    Parameters
    ----------
    federation : Federation, default=None
        The hosts. ``None`` fits the same optimiser in plaintext on the columns of
        ``X`` (a guest-only baseline, or the centralised reference on joined columns).
        With a federation, ``X`` must be a pandas DataFrame indexed by sample ID.
    penalty : {"l2", "l1"} or None, default="l2"
        ``"l1"`` needs ``solver="sgd"``. The intercept is never penalised.
    C : float, default=1.0
        Inverse regularisation strength, as in scikit-learn: the objective is
        ``C * sum_i s_i loss_i + penalty(w)``.
    fit_intercept : bool, default=True
        Fit an intercept (a guest column).
    max_iter : int, default=100
        Iterations (``pcg``, ``lbfgs``) or epochs (``sgd``).
    tol : float, default=1e-4
        ``pcg`` stops when the largest absolute gradient coordinate of the objective
        (mean loss plus penalty, as in scikit-learn's ``lbfgs``) is below ``tol``.
        ``lbfgs`` counts a fit as converged when that gradient is below ``tol`` too, but
        iterates on until it is below ``tol / 100`` (or stalls): scikit-learn's criterion
        ``gtol=tol`` leaves the coefficients about 1% away from the optimum on
        standardised data, the tighter one within 1e-3 (a few more iterations: 30
        instead of 17 on the breast-cancer benchmark). ``sgd`` stops when the loss has
        not improved by ``tol`` for ``n_iter_no_change`` epochs.
    solver : {"auto", "pcg", "lbfgs", "sgd"}, default="auto"
        ``"pcg"``: preconditioned conjugate gradient on the Taylor loss (needs
        ``protocol="taylor"``); ``"lbfgs"``: L-BFGS on the exact loss (needs
        ``protocol="exact"``); ``"sgd"``: mini-batch (proximal) gradient descent, either
        protocol, any penalty. ``"auto"`` picks ``"sgd"`` for ``penalty="l1"`` or
        ``early_stopping=True``, else ``"pcg"`` or ``"lbfgs"`` by protocol.
    batch_size : int, default=None
        Rows per ``sgd`` step; ``None`` means ``min(256, n_samples)``.
    learning_rate : float, default=0.1
        Constant step size of ``sgd``. It suits standardised columns; on columns with
        large values the steps diverge, and the fit stops with a ``ConvergenceWarning``
        (see ``n_iter_``).
    early_stopping : bool, default=False
        ``sgd`` only: hold out ``validation_fraction`` of the rows (stratified) and stop
        when their loss stops improving. The stopping score is the validation loss (the
        Taylor loss for ``protocol="taylor"``), not the accuracy scikit-learn's SGD uses:
        the accuracy would need the hosts' partial scores in the clear. The hosts learn
        which aligned rows are held out (mini-batches name their rows too), not why.
    validation_fraction : float, default=0.1
        Fraction of rows held out with ``early_stopping``.
    n_iter_no_change : int, default=5
        Epochs without improvement before ``sgd`` stops.
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes, as in scikit-learn (multiplied into sample weights;
        with one-vs-rest every binary problem uses the weights of the original classes).
    warm_start : bool, default=False
        Start from the previous fit's coefficients (the hosts from theirs, found in
        their model store by the previous model IDs). If a host no longer holds them
        (a new or reset party server), the fit raises a ``ProtocolError`` that says to
        set ``warm_start=False``.
    protocol : {"taylor", "exact"}, default="taylor"
        The loss and its protocol, see Notes. Without a federation it still selects
        the loss (Taylor surrogate or exact logistic loss).
    key_length : int, default=2048
        Paillier modulus length of the guest's key (a ``taylor`` host makes its own key
        of the same length). Hosts refuse keys shorter than their ``min_key_length``.
    n_jobs : int, default=None
        Workers for the guest's encryption, decryption and multi-exponentiation
        (joblib's active backend). The hosts use their own ``n_jobs`` setting. With
        ``protocol="exact"`` and two or more workers, as many processes of idle CPU
        priority also make the next iteration's encryption randomness.
    random_state : int, RandomState instance or None, default=None
        Shuffling of ``sgd`` batches and of the early-stopping split.
    verbose : int, default=0
        0: silent; 1: a progress bar over the iterations (tqdm, on stderr); 2 or more:
        also print the loss at every iteration.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    coef_ : ndarray of shape (1, n_features_in_) or (n_classes, n_features_in_)
        Coefficients of the guest's columns only. The hosts' coefficients never leave
        the hosts.
    intercept_ : ndarray of shape (1,) or (n_classes,)
    n_iter_ : ndarray of shape (1,) or (n_classes,)
        Iterations of each binary problem for ``pcg`` and ``lbfgs``. Epochs for
        ``sgd``, which fits all one-vs-rest problems together: shape (1,) for ``sgd``
        whatever the number of classes.
    loss_curve_ : list of float
        Objective (mean loss plus penalty, summed over the one-vs-rest problems); the
        Taylor objective for ``protocol="taylor"``. ``pcg`` and ``lbfgs``: at the start
        and after every iteration (one-vs-rest problems that stopped earlier count with
        their last value). ``sgd``: one value per epoch, the mean of its mini-batch
        losses (each taken before the batch's step) plus the penalty at the end of the
        epoch; no starting value.
    n_features_in_ : int
        Number of guest columns.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Guest column names, when ``X`` has string column names.
    n_host_features_ : dict
        ``{host: number of its columns}`` (empty without a federation).
    crypto_ops_ : dict
        Paillier operations of the last fit, ``{"guest": {...}, host: {...}}``:
        encryptions, decryptions, re-randomisations, multi-exponentiation terms.

    See Also
    --------
    sklearn.linear_model.LogisticRegression : the centralised model; with
        ``protocol="exact"`` a federated fit reaches its optimum.
    fedsk.SecureBoostClassifier : federated gradient boosting.

    Notes
    -----
    **Objective.** scikit-learn's: ``C * sum_i s_i loss_i + ||w||^2 / 2`` (``l2``) or
    ``+ ||w||_1`` (``l1``), with ``s_i`` the sample weights times the class weights.
    The ``"taylor"`` protocol replaces the logistic loss by its second-order expansion
    at 0, ``log 2 - y' z / 2 + z^2 / 8`` (``y' = 2y - 1``), as FATE and Hardy et al.
    (2017) do. That is a quadratic surrogate, not the logistic loss: its optimum is a
    ridge-regression-like fit of ``y'`` whose probabilities are not calibrated and whose
    ranking is usually close to, but not the same as, logistic regression's. Use
    ``protocol="exact"`` for the logistic loss itself.

    **protocol="taylor"** (default; one host; no third party; each party has its own
    Paillier key). The Taylor objective is quadratic, ``log 2 - b.w + w.A w / 2`` with
    ``A = X^T S X / (4 sum s) + lam R``, so it is solved by conjugate gradient with a
    block-Jacobi preconditioner (each party inverts its own diagonal block), which needs
    one product ``A u`` per iteration. Setup: the guest encrypts its weighted columns and
    labels, ``[[S X_g, S y']]``, several columns packed in one plaintext; the host
    multiplies them by its columns under encryption (multi-exponentiation), keeps
    ``[[C]]`` with ``C = X_g^T S X_h`` and gives the guest random additive shares of ``C``
    and of ``X_h^T S y'`` (the guest decrypts only masked values). Each CG iteration is
    then one round trip whose cost does not depend on the number of rows: the guest sends
    ``[[C^T u_g]]`` under the host's key, the host answers ``[[C u_h]]`` under the guest's
    key, and each decrypts only its own product. What each side learns: the guest learns
    the host's number of columns, the step sizes and the sums ``r.u``, ``w.u`` and
    ``max|r|`` over both parties, and its own CG vectors (which include ``C u_h``); the
    host learns the same scalars, its own CG vectors (including ``C^T u_g``), its part of
    the right-hand side ``X_h^T S y' / (2 sum s)`` (its gradient at 0) and whether the
    sample weights are uniform. Neither learns the other's partial predictions ``X w``,
    residuals, labels, features or coefficients, nor ``C``. With non-uniform sample
    weights the host's own block ``X_h^T S X_h`` is computed under encryption too (the host
    never sees ``S``), its product returns to it masked through the guest, and an
    iteration takes two round trips. ``solver="sgd"`` exchanges, per mini-batch, the
    guest's ``[[S (z_g / 4 - y' / 2)]]`` and the host's ``[[z_h / 4]]``, each under its
    owner's key; each side returns the other's gradient masked with fresh randomness; the
    guest also learns the batch's Taylor loss. Several hosts are not supported with this
    protocol (it would need host-to-host shares relayed by the guest); use ``"exact"``.

    **protocol="exact"** (any number of hosts; the guest holds the only key). The hosts
    send their partial predictions ``X_h w_h`` in plaintext (and ``X_h p_h`` for each
    L-BFGS search direction, and the three numbers ``w_h.w_h``, ``w_h.p_h``, ``p_h.p_h``):
    **the guest sees every host's partial prediction of every iterate**, which over a
    fit reveals ``X_h`` up to a linear transform (with one host column: up to its sign).
    That is the price of the exact sigmoid. The guest sends ``[[S (sigma(z) - y)/sum s]]``;
    each host computes its gradient under encryption, masks it with fresh randomness;
    the guest decrypts only the masked values and returns them. The guest also learns
    the inner products of each host's L-BFGS history (a ``(2m+1)^2`` Gram matrix) and
    ``max|gradient_h|``; the host learns its gradients and the search coefficients.

    **Prediction needs no encryption**: after a PSI on the requested rows, each host
    returns its partial scores ``X_h w_h`` for them, and the guest adds its own. The guest
    thereby learns those partial scores (as with any vertical model's predictions).

    **Costs** (``n`` rows, ``d_g`` guest columns with the intercept, ``d_h`` host columns,
    ``K`` one-vs-rest problems, ``P`` values per plaintext: about 10 for 2048-bit keys).
    ``taylor``/``pcg``: ``n (ceil(d_g/P) + ceil(K/P))`` guest encryptions and ``d_h`` times
    as many multi-exponentiation terms at the host, once; then per iteration about
    ``2 K ceil(d/P)`` decryptions and ``2 K d_g d_h / P`` short multi-exponentiation
    terms, whatever ``n``. Multi-class costs only the extra label columns and ``K`` times
    the small per-iteration work. ``exact``/``lbfgs``: per iteration and one-vs-rest
    problem, ``n`` encryptions, ``n d_h`` multi-exponentiation terms per host and a few
    decryptions of packed masked gradients. ``sgd``: per epoch and problem, ``n``
    encryptions (``2n`` for ``taylor``) and ``n (d_g + d_h)`` terms.

    **Host data.** A host column's missing values (NaN) are replaced by its mean over the
    aligned training rows; the means are stored with the host's model and used when
    scoring. Host values must stay below ``2**38`` in absolute value, and each host
    column's largest absolute value must be at least ``2**-10`` (they are encoded with
    24 fractional bits; a host refuses a column outside these bounds, naming it, and
    with ``protocol="taylor"`` the guest's columns need the same lower bound);
    standardised columns work best (the hosts' columns are not rescaled by the guest's
    pipeline).

    The Paillier private keys exist only during ``fit``: a pickled model holds the
    guest's coefficients, the hosts' model IDs and the federation handle.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from fedsk import FederatedLogisticRegression, LocalFederation
    >>> rng = np.random.default_rng(0)
    >>> ids = [f"c{i}" for i in range(80)]
    >>> bank = pd.DataFrame(rng.normal(size=(80, 2)), index=ids, columns=["income", "debt"])
    >>> insurer = pd.DataFrame(rng.normal(size=(80, 2)), index=ids, columns=["age", "claims"])
    >>> y = (bank["income"] - insurer["claims"] > 0).astype(int)
    >>> with LocalFederation(hosts={"insurer": insurer}) as fed:
    ...     clf = FederatedLogisticRegression(federation=fed, key_length=1024).fit(bank, y)
    ...     print(clf.coef_.shape, clf.n_host_features_, clf.score(bank, y) > 0.9)
    (1, 2) {'insurer': 2} True
    """

    _parameter_constraints: dict = {
        "federation": [Federation, None],
        "penalty": [StrOptions({"l2", "l1"}), None],
        "C": [Interval(Real, 0, None, closed="neither")],
        "fit_intercept": ["boolean"],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "solver": [StrOptions({"auto", "pcg", "lbfgs", "sgd"})],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "class_weight": [dict, StrOptions({"balanced"}), None],
        "warm_start": ["boolean"],
        "protocol": [StrOptions({"taylor", "exact"})],
        "key_length": [Interval(Integral, 1024, None, closed="left")],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        federation=None,
        *,
        penalty="l2",
        C=1.0,
        fit_intercept=True,
        max_iter=100,
        tol=1e-4,
        solver="auto",
        batch_size=None,
        learning_rate=0.1,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=5,
        class_weight=None,
        warm_start=False,
        protocol="taylor",
        key_length=2048,
        n_jobs=None,
        random_state=None,
        verbose=0,
    ):
        self.federation = federation
        self.penalty = penalty
        self.C = C
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.solver = solver
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.warm_start = warm_start
        self.protocol = protocol
        self.key_length = key_length
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.non_deterministic = self.solver == "sgd" or self.early_stopping
        return tags

    # -- fit ---------------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the model (with a federation: jointly with the hosts' columns).

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)
            The guest's columns. With a federation, a DataFrame indexed by sample ID;
            every ID must be held by every host.
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : FederatedLogisticRegression
        """
        solver = _check_solver(self.penalty, self.solver, self.protocol, self.early_stopping)
        check_key_and_workers(self)
        federated = self.federation is not None
        if federated:
            check_federated_X(X, self, y=y, sample_weight=sample_weight)
            ids = X.index.to_numpy()
        check_labels(y, X)
        X = columnless(X)  # (a guest holding labels only; locally: sklearn says no columns)
        X, y = validate_data(
            self,
            X,
            y,
            dtype=np.float64,
            order="C",
            ensure_min_features=0 if federated else 1,  # a guest may hold labels only
        )
        encoder, _ = encode_classes(y)
        classes = encoder.classes_
        if len(classes) < 2:
            raise ValueError(
                "This solver needs samples of at least 2 classes in the data, but the "
                f"data contains only one class: {classes[0]!r}"
            )
        sw = _check_sample_weight(sample_weight, X, dtype=np.float64)
        if self.class_weight is not None:
            cw = compute_class_weight(self.class_weight, classes=classes, y=y, sample_weight=sw)
            sw = sw * cw[encoder.transform(y)]
        sw_sum = float(sw.sum())
        if not sw_sum > 0:
            raise ValueError("the sample weights must have a positive sum")
        n, d = X.shape
        codes = encoder.transform(y)
        Y = (codes == 1)[:, None] if len(classes) == 2 else np.eye(len(classes))[codes] > 0
        Y = Y.astype(np.float64)
        K = Y.shape[1]
        Xa = np.hstack([X, np.ones((n, 1))]) if self.fit_intercept else X
        if federated and self.protocol == "taylor" and d:
            self._check_guest_scale(X)
        if federated and Xa.shape[1] == 0 and self.protocol != "exact":
            raise ValueError(
                "this guest holds no columns and fit_intercept=False, so it has no "
                f"coefficient of its own; protocol={self.protocol!r} needs at least one: "
                "set fit_intercept=True, or protocol='exact'"
            )
        penalised = np.arange(Xa.shape[1]) < d
        x0, warm_models = self._starting_point(Xa.shape[1], K, classes)
        rng = check_random_state(self.random_state)
        train, validation = np.arange(n), None
        if solver == "sgd" and self.early_stopping:
            train, validation = self._split(codes, rng)
        problem = Problem(
            X=Xa,
            sw=sw * (n / sw_sum),
            Y=Y,
            protocol=self.protocol,
            solver=solver,
            penalty="none" if self.penalty is None else self.penalty,
            lam=0.0 if self.penalty is None else 1.0 / (self.C * sw_sum),
            penalised=penalised,
            x0=x0,
            intercept=self.fit_intercept,
            weighted=not np.all(sw == sw[0]),
            tol=self.tol,
            max_iter=self.max_iter,
            batch_size=min(self.batch_size or 256, len(train)),
            learning_rate=self.learning_rate,
            train=train,
            validation=validation,
            n_iter_no_change=self.n_iter_no_change,
            rng=rng,
            verbose=self.verbose,
        )
        if federated:
            try:
                outcome = federated_fit(
                    problem,
                    self.federation,
                    ids,
                    key_length=self.key_length,
                    n_jobs=self.n_jobs,
                    warm_models=warm_models,
                )
            except ProtocolError as exc:
                if warm_models and getattr(exc, "status", None) == 404:
                    raise ProtocolError(
                        f"warm_start=True, but a host no longer holds its half of the previous "
                        f"fit ({exc}). Set warm_start=False to fit from zero coefficients "
                        "(like SecureBoostClassifier, this estimator never switches to a "
                        "cold start on its own)."
                    ) from exc
                raise
        else:
            outcome = plain_fit(problem)
        if not outcome.converged:
            message = outcome.message or (
                f"FederatedLogisticRegression ({solver}) did not converge in "
                f"max_iter={self.max_iter} iterations; increase max_iter or tol."
            )
            warnings.warn(message, ConvergenceWarning, stacklevel=2)
        self.classes_ = classes
        self.coef_ = np.ascontiguousarray(outcome.coef[:d].T)
        self.intercept_ = outcome.coef[d].copy() if self.fit_intercept else np.zeros(K)
        self.n_iter_ = outcome.n_iter
        self.loss_curve_ = outcome.loss_curve
        self.n_host_features_ = dict(outcome.n_host_features)
        self.crypto_ops_ = outcome.ops
        self._host_models = dict(outcome.host_models)
        return self

    def _check_guest_scale(self, X):
        """Taylor's shared Gram holds the guest's values in fixed point (as the hosts
        hold theirs): a column on a tiny scale would lose its precision there (and its
        preconditioner overflow the solver's fixed point)."""
        top = np.abs(X).max(axis=0)
        small = np.flatnonzero((top > 0) & (top < 2.0**MIN_X_BITS))
        if small.size:
            j = int(small[0])
            names = getattr(self, "feature_names_in_", None)
            column = f"column {names[j]!r}" if names is not None else f"column {j}"
            raise ValueError(
                f"X {column} holds only values below 2**{MIN_X_BITS} in absolute value; "
                "protocol='taylor' encodes values in fixed point, where such a column "
                "loses its precision: standardise it (e.g. StandardScaler in a Pipeline), "
                "or use protocol='exact'"
            )

    def _starting_point(self, n_coef, K, classes):
        """Warm start: the previous coefficients (and host model IDs), if they fit."""
        x0 = np.zeros((n_coef, K))
        if not (self.warm_start and hasattr(self, "coef_")):
            return x0, None
        if not np.array_equal(getattr(self, "classes_", None), classes):
            return x0, None
        prev = self.coef_.T
        if prev.shape != (n_coef - int(self.fit_intercept), K):
            return x0, None
        x0[: prev.shape[0]] = prev
        if self.fit_intercept:
            x0[-1] = self.intercept_
        models = getattr(self, "_host_models", None) or None
        if self.federation is None or (
            models is not None and sorted(models) != sorted(self.federation.host_names)
        ):
            models = None
        return x0, models

    def _split(self, codes, rng):
        """Stratified train/validation rows for early stopping."""
        from sklearn.model_selection import StratifiedShuffleSplit

        splitter = StratifiedShuffleSplit(
            n_splits=1, test_size=self.validation_fraction, random_state=rng
        )
        try:
            train, validation = next(splitter.split(np.zeros(len(codes)), codes))
        except ValueError as exc:
            raise ValueError(
                f"early_stopping: cannot hold out validation_fraction="
                f"{self.validation_fraction} of {len(codes)} rows by class ({exc})"
            ) from None
        return np.sort(train), np.sort(validation)

    # -- predict -------------------------------------------------------------------------------
    def decision_function(self, X):
        """Scores: the guest's ``X @ coef_.T + intercept_`` plus every host's partial score.

        Parameters
        ----------
        X : {array-like, DataFrame} of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        check_is_fitted(self)
        models = getattr(self, "_host_models", None)
        if models:
            if self.federation is None:
                raise ValueError(
                    "this model was fitted with a federation (the hosts keep their halves); "
                    "set `federation` to predict"
                )
            check_federated_X(X, self, predict=True)
            ids, rows = unique_ids(X)  # (an ID may repeat: each row is scored)
        X = columnless(X)
        Xv = validate_data(
            self, X, reset=False, dtype=np.float64, ensure_min_features=0 if models else 1
        )
        scores = Xv @ self.coef_.T + self.intercept_
        if models:
            scores = (
                scores
                + federated_scores(
                    self.federation, ids, models, self.coef_.shape[0], n_jobs=self.n_jobs
                )[rows]
            )
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict_proba(self, X):
        """Probability estimates (one-vs-rest probabilities normalised for multi-class).

        With ``protocol="taylor"`` they are the sigmoid of a Taylor-loss fit: a ranking
        score more than a calibrated probability.
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = expit(scores)
            return np.column_stack([1.0 - p, p])
        p = expit(scores)
        return p / p.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        return np.log(self.predict_proba(X))
