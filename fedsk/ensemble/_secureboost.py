"""SecureBoostClassifier and SecureBoostRegressor: lossless vertical gradient boosting.

The estimators are thin, as scikit-learn's HistGradientBoosting is: they validate, pick
an engine (local, or federated over the hosts), then drive the plain tree core
(:func:`fedsk.tree.grow_trees`) round after round.
"""

from abc import ABC, abstractmethod
from numbers import Integral, Real
from time import perf_counter

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from .._labels import check_labels, encode_classes
from .._progress import progress_bar
from ..federation import (
    Federation,
    aligned_sessions,
    check_federated_X,
    check_key_and_workers,
    columnless,
    in_model_order,
    keyed_sessions,
    unique_ids,
)
from ..tree import SplitParams, TreePredictor, TreeSpec, grow_trees, quantize
from ._loss import HalfSquaredError, LogLoss, MultinomialLoss
from ._protocol import FederatedEngine, LocalEngine, host_decisions

__all__ = ["SecureBoostClassifier", "SecureBoostRegressor"]


class BaseSecureBoost(BaseEstimator, ABC):
    _parameter_constraints = {
        "federation": [Federation, None],
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "max_depth": [Interval(Integral, 1, 32, closed="both")],
        "max_bins": [Interval(Integral, 2, 255, closed="both")],
        "min_child_weight": [Interval(Real, 0, None, closed="left")],
        "min_samples_leaf": [Interval(Integral, 1, None, closed="left")],
        "l2_regularization": [Interval(Real, 0, None, closed="left")],
        "min_split_gain": [Interval(Real, 0, None, closed="left")],
        "subsample": [Interval(Real, 0, 1, closed="right")],
        "colsample": [Interval(Real, 0, 1, closed="right")],
        "early_stopping": [StrOptions({"auto"}), "boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "warm_start": ["boolean"],
        "key_length": [Interval(Integral, 1024, None, closed="left")],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        federation=None,
        *,
        n_estimators=10,
        learning_rate=0.3,
        max_depth=3,
        max_bins=32,
        min_child_weight=1.0,
        min_samples_leaf=1,
        l2_regularization=1.0,
        min_split_gain=0.0,
        subsample=1.0,
        colsample=1.0,
        early_stopping="auto",
        validation_fraction=0.1,
        n_iter_no_change=10,
        tol=1e-7,
        warm_start=False,
        key_length=2048,
        n_jobs=None,
        random_state=None,
        verbose=0,
    ):
        self.federation = federation
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.max_bins = max_bins
        self.min_child_weight = min_child_weight
        self.min_samples_leaf = min_samples_leaf
        self.l2_regularization = l2_regularization
        self.min_split_gain = min_split_gain
        self.subsample = subsample
        self.colsample = colsample
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.warm_start = warm_start
        self.key_length = key_length
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    # -- hooks of the two estimators ---------------------------------------------------------
    @abstractmethod
    def _encode_y(self, y):
        """Return (encoded y, loss)."""

    @abstractmethod
    def _stratify(self, y):
        """What to stratify the validation split on (None for regression)."""

    # -- fitting -------------------------------------------------------------------------------

    def _split_error(self, stratify, n, exc):
        """Why early stopping cannot hold out its validation rows, in the user's labels."""
        why = str(exc)
        if stratify is not None:
            codes, counts = np.unique(stratify, return_counts=True)
            few = self.classes_[codes[counts < 2]].tolist()
            if few:
                why = f"class(es) {few} have a single sample"
        return (
            f"early_stopping holds out validation_fraction={self.validation_fraction} of the "
            f"{n} rows, stratified by class, and cannot: {why}. Set early_stopping=False, "
            "or give every class at least two samples."
        )

    def _is_fitted(self):
        return hasattr(self, "_predictors")

    def _clear_state(self):
        for attr in (
            "_predictors",
            "_baseline",
            "_host_names",
            "_host_model_ids",
            "_host_feature_names",
            "train_score_",
            "validation_score_",
            "_seed",
            "_crypto_counts",
        ):
            if hasattr(self, attr):
                delattr(self, attr)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the boosted trees (federated when ``federation`` is set).

        Parameters
        ----------
        X : DataFrame of shape (n_samples, n_features)
            The guest's columns. With a federation it must be indexed by sample ID;
            every ID must be held by every host.
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the samples: they scale each sample's gradient and
            hessian (so ``min_child_weight`` compares weighted hessian sums), the
            baseline score and ``train_score_`` / ``validation_score_``. They stay
            with the guest; in a federated fit every round then encrypts h (see
            Notes). So bins are the quantiles of the rows, unweighted: each host bins
            its own columns and never sees the weights (HistGradientBoosting bins with
            them). ``min_samples_leaf`` counts rows too. A weight of 2 is therefore not
            a repeated row: sklearn's ``check_sample_weight_equivalence_on_dense_data``
            is an expected failure.

        Returns
        -------
        self
        """
        fed = self.federation
        check_key_and_workers(self)
        if fed is not None:
            check_federated_X(X, self, y=y, sample_weight=sample_weight)
            ids = X.index.to_numpy()
        check_labels(y, X)
        X = columnless(X)  # (a guest holding labels only; locally: sklearn says no columns)
        # a continued fit must see the columns of the first (reset=False checks them)
        X_arr, y = validate_data(
            self,
            X,
            y,
            reset=not (self.warm_start and self._is_fitted()),
            dtype=np.float64,
            ensure_all_finite="allow-nan",
            ensure_min_features=0 if fed is not None else 1,  # a guest may hold labels only
            y_numeric=not isinstance(self, ClassifierMixin),
        )
        y, loss = self._encode_y(y)
        weights = _check_weights(sample_weight, X_arr)
        if not self.warm_start:
            self._clear_state()
        if self._is_fitted():
            if self.n_estimators < self.n_estimators_:
                raise ValueError(
                    f"n_estimators={self.n_estimators} must be larger or equal to "
                    f"n_estimators_={self.n_estimators_} when warm_start==True"
                )
            if (fed is None) != (not self._host_names):
                raise ValueError("warm_start cannot switch between local and federated fits")
            if fed is not None and sorted(fed.hosts) != sorted(self._host_names):
                raise ValueError(
                    f"warm_start needs a federation with the hosts of the first fit "
                    f"{self._host_names}; this one has {list(fed.hosts)}"
                )
            if self.n_estimators == self.n_estimators_:
                return self
        else:
            self._seed = int(check_random_state(self.random_state).randint(2**31 - 1))

        n = X_arr.shape[0]
        positions = np.arange(n)
        do_es = self.early_stopping is True or (self.early_stopping == "auto" and n > 10_000)
        if do_es:
            stratify = self._stratify(y)
            try:
                train_pos, val_pos = train_test_split(
                    positions,
                    test_size=self.validation_fraction,
                    stratify=stratify,
                    random_state=self._seed,
                )
            except ValueError as exc:
                raise ValueError(self._split_error(stratify, n, exc)) from None
            train_pos, val_pos = np.sort(train_pos), np.sort(val_pos)
        else:
            train_pos, val_pos = positions, positions[:0]

        started = perf_counter()
        if fed is None:
            engine = LocalEngine(X_arr, train_pos, self.max_bins)
            self._boost(engine, X_arr, y, weights, loss, train_pos, val_pos, decisions=None)
            self._host_names, self._host_model_ids, self._host_feature_names = [], [], []
        else:
            model_ids = self._host_model_ids if self._is_fitted() else None
            with keyed_sessions(
                fed,
                ids,
                protocol="secureboost",
                key_length=self.key_length,
                n_jobs=self.n_jobs,
                ahead=self._round_encryptions(len(train_pos), loss),
                keep_models=self.warm_start,  # (a failed fit's completed rounds go on)
            ) as (sess, keypair, stock):
                if self._is_fitted():
                    sess = in_model_order(sess, self._host_names)
                engine = FederatedEngine(
                    sess,
                    X_arr,
                    train_pos,
                    max_bins=self.max_bins,
                    keypair=keypair,
                    n_jobs=self.n_jobs,
                    model_ids=model_ids,
                    stock=stock,
                )
                self._host_names = [s.name for s in sess]
                self._host_model_ids = list(engine.model_ids)
                self._host_feature_names = [
                    s.feature_names or [str(j) for j in range(nf)]
                    for s, nf in zip(sess, engine.host_n_features)
                ]
                decisions = engine.existing_decisions(n) if self._is_fitted() else None
                try:
                    self._boost(engine, X_arr, y, weights, loss, train_pos, val_pos, decisions)
                except BaseException:
                    # with warm_start, both sides keep the rounds they completed and the
                    # next fit continues; without, the hosts delete what they saved
                    if not self.warm_start:
                        self._clear_state()
                    raise
                finally:
                    self._crypto_counts = dict(engine.counts)
        self.fit_time_ = perf_counter() - started
        return self

    def _round_encryptions(self, n_train, loss):
        """Encryptions a boosting round makes: one per active sample and tree."""
        active = max(1, round(self.subsample * n_train)) if self.subsample < 1.0 else n_train
        return active * loss.n_trees_per_round

    def _boost(self, engine, X, y, weights, loss, train_pos, val_pos, decisions):
        n = X.shape[0]
        if not self._is_fitted():
            self._baseline = loss.baseline(y[train_pos], _take(weights, train_pos))
            self._predictors = []
            self.train_score_, self.validation_score_ = np.empty(0), np.empty(0)
            self._n_features_total = engine.n_features_total
        raw = np.tile(self._baseline, (n, 1)).astype(np.float64)
        for round_trees in self._predictors:
            for k, tree in enumerate(round_trees):
                raw[:, k] += tree.predict(X, decisions)
        if not len(self.train_score_):
            self._record_scores(loss, y, weights, raw, train_pos, val_pos)
        params = SplitParams(
            self.l2_regularization,
            self.min_child_weight,
            self.min_samples_leaf,
            self.min_split_gain,
        )
        progress = progress_bar(
            self.verbose,
            self.n_estimators,
            initial=len(self._predictors),
            desc=type(self).__name__,
            unit="tree",
        )
        try:
            for it in range(len(self._predictors), self.n_estimators):
                rng = np.random.default_rng([self._seed, it])
                active = np.zeros(n, dtype=bool)
                if self.subsample < 1.0:
                    size = max(1, round(self.subsample * len(train_pos)))
                    active[np.sort(rng.choice(train_pos, size, replace=False))] = True
                else:
                    active[train_pos] = True
                features = None
                if self.colsample < 1.0:
                    size = max(1, round(self.colsample * engine.n_features_total))
                    features = np.sort(rng.choice(engine.n_features_total, size, replace=False))
                specs = []
                for k, (g, h) in enumerate(loss.gradients(y, raw)):
                    if weights is not None:
                        g, h = g * weights, h * weights
                    g = np.where(active, g, 0.0)
                    h = np.where(active, h, 0.0)
                    specs.append(TreeSpec(quantize(g, h), features, slot=k))
                # The hosts persist their half of the round with its last request, so the
                # round counts once grow_trees has returned. Every h equal is public in a
                # fresh fit's first round (one baseline score) and for a loss with a
                # constant hessian, unless sample weights scale them: then whether the
                # weights differ is the guest's to keep, and h is always encrypted.
                engine.start_round(
                    specs,
                    active,
                    n_rounds=len(self._predictors) + 1,
                    same_h_is_public=weights is None
                    and (loss.constant_hessian or not self._predictors),
                    next_round=it + 1 < self.n_estimators,
                )
                trees = grow_trees(
                    engine.source,
                    specs,
                    active,
                    max_depth=self.max_depth,
                    params=params,
                    learning_rate=self.learning_rate,
                    n_rows=n,
                )
                predictors = [
                    TreePredictor.from_grower(t, engine.threshold_of, engine.n_local_features)
                    for t in trees
                ]
                self._predictors.append(predictors)
                for k, t in enumerate(trees):
                    raw[:, k] += t.leaf_values_of_rows(n)
                self._record_scores(loss, y, weights, raw, train_pos, val_pos)
                progress.update(1)
                if len(val_pos) and self._should_stop(self.validation_score_):
                    break
        finally:
            progress.close()

    def _record_scores(self, loss, y, weights, raw, train_pos, val_pos):
        train = -loss.loss(y[train_pos], raw[train_pos], _take(weights, train_pos))
        self.train_score_ = np.append(self.train_score_, train)
        if len(val_pos):
            val = -loss.loss(y[val_pos], raw[val_pos], _take(weights, val_pos))
            self.validation_score_ = np.append(self.validation_score_, val)

    def _should_stop(self, scores):
        ref = self.n_iter_no_change + 1
        if len(scores) < ref:
            return False
        reference = scores[-ref] + self.tol
        return not any(s > reference for s in scores[-ref + 1 :])

    # -- fitted attributes ------------------------------------------------------------------
    @property
    def n_estimators_(self):
        """Number of boosting rounds fitted (early stopping may stop before n_estimators)."""
        check_is_fitted(self, "_predictors")
        return len(self._predictors)

    @property
    def host_n_features_(self):
        """Number of columns of each host (the guest never sees their values)."""
        check_is_fitted(self, "_predictors")
        return {h: len(names) for h, names in zip(self._host_names, self._host_feature_names)}

    def _importance_table(self):
        check_is_fitted(self, "_predictors")
        n_total = self._n_features_total
        gain, split = np.zeros(n_total), np.zeros(n_total, dtype=np.int64)
        for round_trees in self._predictors:
            for t in round_trees:
                inner = t.left >= 0
                np.add.at(gain, t.split_feature[inner], t.gain[inner])
                np.add.at(split, t.split_feature[inner], 1)
        total = gain.sum()
        gain = gain / total if total > 0 else gain
        names = (
            list(self.feature_names_in_)
            if hasattr(self, "feature_names_in_")
            else [f"x{j}" for j in range(self.n_features_in_)]
        )
        parties = ["guest"] * self.n_features_in_
        for host, hnames in zip(self._host_names, self._host_feature_names):
            parties += [host] * len(hnames)
            names += list(hnames)
        return pd.DataFrame({"party": parties, "feature": names, "gain": gain, "split": split})

    @property
    def feature_importances_(self):
        """Gain importance of the guest's columns (normalised over every party's splits)."""
        return self._importance_table()["gain"].to_numpy()[: self.n_features_in_]

    @property
    def importances_(self):
        """Gain (normalised) and split-count importance of every column of every party.

        Host columns appear under the host's names when it publishes them, otherwise
        under the host's own column index.
        """
        return self._importance_table()

    @property
    def host_feature_importances_(self):
        """``{host: Series}`` of gain importance of each host's columns."""
        table = self._importance_table()
        return {h: table[table.party == h].set_index("feature")["gain"] for h in self._host_names}

    # -- prediction -----------------------------------------------------------------------
    def _raw_predict(self, X):
        check_is_fitted(self, "_predictors")
        decisions = None
        if self._host_names:
            fed = self.federation
            if fed is None or sorted(fed.hosts) != sorted(self._host_names):
                raise ValueError(
                    f"this model was fitted with hosts {self._host_names}; predict "
                    "needs a federation with the same hosts"
                    + ("" if fed is None else f" (this one has {list(fed.hosts)})")
                )
            check_federated_X(X, self, predict=True)
            X_arr = validate_data(
                self,
                columnless(X),
                dtype=np.float64,
                ensure_all_finite="allow-nan",
                ensure_min_features=0,
                reset=False,
            )
            ids, rows = unique_ids(X)  # (an ID may repeat: each row is scored)
            with aligned_sessions(
                fed, ids, protocol="secureboost-predict", n_jobs=self.n_jobs
            ) as sessions:
                sessions = in_model_order(sessions, self._host_names)
                decisions = host_decisions(sessions, len(ids), self._host_model_ids)
            decisions = {h: d[rows] for h, d in decisions.items()}
        else:
            X_arr = validate_data(
                self, columnless(X), dtype=np.float64, ensure_all_finite="allow-nan", reset=False
            )
        raw = np.tile(self._baseline, (X_arr.shape[0], 1)).astype(np.float64)
        for round_trees in self._predictors:
            for k, tree in enumerate(round_trees):
                raw[:, k] += tree.predict(X_arr, decisions)
        return raw


def _check_weights(sample_weight, X):
    """``None`` for no weights (or all 1: the same fit), else float64 weights >= 0."""
    if sample_weight is None:
        return None
    weights = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
    return None if (weights == 1).all() else weights


def _take(weights, positions):
    return None if weights is None else weights[positions]


_NOTES = """
    Notes
    -----
    Roles and protocol (SecureBoost, Cheng et al. 2019, with SecureBoost+'s packing):
    the guest (this process) holds the labels and the only Paillier private key. Per
    boosting round it quantises each tree's gradients and hessians to 16-bit integers,
    packs (g, h) of a sample into one plaintext and encrypts it once. Per layer
    each host sums those ciphertexts into (feature, bin) histograms for the smaller
    child of every split (the sibling is parent minus child), packs many bins into one
    ciphertext (each bin's record as wide as its number of rows needs; each column's
    last non-empty bin is left out, since the guest gets it from the node's totals),
    re-randomises and returns them with each bin's number of rows (in the clear); the
    guest decrypts and picks the best split over all parties. A winning host split is
    sent back as "node k, your candidate (feature, bin)"; the host keeps the real
    threshold in its own table and answers which rows go left. Each layer is one
    request per host: the chosen splits travel with the next layer's histogram request
    (the round's gradients with the roots', the last layer's splits with the order to
    persist the round). Prediction asks each host once for its left/right decisions on
    the requested rows.

    What the guest learns: the hosts' numbers of columns (and names if published),
    aggregated (g, h, count) sums per (feature, bin) of each host column for each node,
    and which host (feature, bin) won. It never sees a host's feature values or
    thresholds. What a host learns: the guest's public key, ciphertexts, which rows are
    in each node (the instance space of every split) and its own winning candidates, and
    from the record layout whether only g is encrypted (a fresh fit's first round, where
    every h is equal by construction, and every round of the regressor, whose h is 1;
    never in a fit with ``sample_weight``, so that it cannot tell whether the weights
    differ), and with early stopping which rows are held out for validation (they are
    in no node). It never sees labels, gradients, sample weights, the guest's features
    or its splits.

    Losslessness: gradients are quantised on the local path too, so a fit with
    ``federation=None`` on the joined columns grows exactly the same trees (same
    features, thresholds and leaf values) as the federated fit. The quantisation step
    is set each round by the largest gradient, so a target with extreme outliers
    (squared error) leaves the other samples' gradients few distinct values: scale,
    clip or transform such a target (e.g. ``TransformedTargetRegressor``) first.
"""


class SecureBoostClassifier(ClassifierMixin, BaseSecureBoost):
    __doc__ = (
        """Vertical federated gradient-boosted trees for classification (SecureBoost).

    Binary (log loss) and multi-class (softmax: one tree per class per round, as
    scikit-learn and FATE do). With ``federation=None`` it fits the same algorithm
    locally in plaintext on the given columns.

    Parameters
    ----------
    federation : Federation, default=None
        The hosts to train with (e.g. a :class:`~fedsk.LocalFederation`); ``None``
        fits locally on the columns of X.
    n_estimators : int, default=10
        Boosting rounds.
    learning_rate : float, default=0.3
        Shrinkage of every leaf value.
    max_depth : int, default=3
        Depth of every tree.
    max_bins : int, default=32
        Quantile bins per column (missing values get one more bin).
    min_child_weight : float, default=1.0
        Minimum hessian sum of a child (XGBoost's name).
    min_samples_leaf : int, default=1
        Minimum samples of a child.
    l2_regularization : float, default=1.0
        L2 penalty on leaf values (XGBoost's ``reg_lambda``).
    min_split_gain : float, default=0.0
        Minimum loss reduction to split (XGBoost's ``gamma``).
    subsample : float, default=1.0
        Fraction of training rows used by each round (drawn without replacement).
    colsample : float, default=1.0
        Fraction of all parties' columns each round may split on.
    early_stopping : 'auto' or bool, default='auto'
        Hold out ``validation_fraction`` of the rows and stop when the validation loss
        stops improving; 'auto' enables it above 10,000 samples.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
    tol : float, default=1e-7
    warm_start : bool, default=False
        Add rounds to an existing fit (also after a failed federated fit: it continues
        from the last completed round, which the hosts have persisted).
    key_length : int, default=2048
        Paillier key length of the guest's session key.
    n_jobs : int, default=None
        Workers for the guest's encryption and decryption (joblib's active backend).
        With two or more (under joblib's default backend), as many worker processes of
        idle CPU priority also make the next round's encryption randomness while the
        hosts work; ``n_jobs=1`` keeps everything in this process.
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0
        Show a progress bar over rounds when > 0.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
        Number of the guest's columns.
    feature_names_in_ : ndarray of shape (n_features_in_,)
    n_estimators_ : int
    train_score_ : ndarray
        Negative log loss on the training rows, before the first round and after each.
    validation_score_ : ndarray
        Same on the validation rows (empty without early stopping).
    feature_importances_ : ndarray of shape (n_features_in_,)
        Gain importance of the guest's columns, normalised over all parties' splits.
    importances_ : DataFrame
        Gain and split importance of every party's columns.
    host_feature_importances_ : dict of Series
    host_n_features_ : dict

    See Also
    --------
    SecureBoostRegressor : The same for regression.
    sklearn.ensemble.HistGradientBoostingClassifier : The centralised cousin.
    """
        + _NOTES
        + """
    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from fedsk import LocalFederation, SecureBoostClassifier
    >>> rng = np.random.default_rng(0)
    >>> ids = [f"c{i}" for i in range(80)]
    >>> guest = pd.DataFrame({"income": rng.normal(size=80)}, index=ids)
    >>> host = pd.DataFrame({"claims": rng.normal(size=80)}, index=ids)
    >>> y = (guest.income + host.claims > 0).astype(int)
    >>> with LocalFederation(hosts={"insurer": host}) as fed:
    ...     clf = SecureBoostClassifier(federation=fed, n_estimators=3, key_length=1024)
    ...     clf = clf.fit(guest, y)
    ...     print(clf.predict(guest.iloc[:5]).shape, round(clf.score(guest, y), 1) > 0.8)
    (5,) True
    """
    )

    def _encode_y(self, y):
        encoder, encoded = encode_classes(y)
        if (
            self._is_fitted()
            and self.warm_start
            and not np.array_equal(encoder.classes_, self.classes_)
        ):
            raise ValueError("warm_start needs the same classes as the first fit")
        self.classes_ = encoder.classes_
        if len(self.classes_) < 2:
            raise ValueError(
                f"y has only one class ({self.classes_[0]!r}); a classifier needs at least two"
            )
        loss = LogLoss() if len(self.classes_) == 2 else MultinomialLoss(len(self.classes_))
        self._loss = loss
        return encoded, loss

    def _stratify(self, y):
        return y

    def decision_function(self, X):
        """Raw scores: log-odds (binary, shape (n,)) or per-class scores (n, n_classes)."""
        raw = self._raw_predict(X)
        return raw[:, 0] if raw.shape[1] == 1 else raw

    def predict_proba(self, X):
        """Class probabilities, shape (n_samples, n_classes)."""
        raw = self._raw_predict(X)
        return self._loss.proba(raw)

    def predict(self, X):
        """Most probable class of each row."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]


MAX_TARGET = 1e150  # |y| beyond this: squared errors (and sums of them) overflow


class SecureBoostRegressor(RegressorMixin, BaseSecureBoost):
    __doc__ = (
        """Vertical federated gradient-boosted trees for regression (half squared error).

    Same parameters, protocol and guarantees as :class:`SecureBoostClassifier`.

    Parameters
    ----------
    federation : Federation, default=None
    n_estimators, learning_rate, max_depth, max_bins, min_child_weight, min_samples_leaf,
    l2_regularization, min_split_gain, subsample, colsample, early_stopping,
    validation_fraction, n_iter_no_change, tol, warm_start, key_length, n_jobs,
    random_state, verbose
        See :class:`SecureBoostClassifier`.

    Attributes
    ----------
    n_features_in_ : int
    feature_names_in_ : ndarray
    n_estimators_ : int
    train_score_ : ndarray
        Negative half squared error before the first round and after each.
    validation_score_ : ndarray
    feature_importances_ : ndarray
    importances_ : DataFrame
    host_feature_importances_ : dict of Series
    host_n_features_ : dict

    See Also
    --------
    SecureBoostClassifier
    sklearn.ensemble.HistGradientBoostingRegressor
    """
        + _NOTES
        + """
    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from fedsk import LocalFederation, SecureBoostRegressor
    >>> rng = np.random.default_rng(0)
    >>> ids = list(range(60))
    >>> guest = pd.DataFrame({"a": rng.normal(size=60)}, index=ids)
    >>> host = pd.DataFrame({"b": rng.normal(size=60)}, index=ids)
    >>> y = 2 * guest.a - host.b
    >>> with LocalFederation(hosts={"telco": host}) as fed:
    ...     reg = SecureBoostRegressor(federation=fed, n_estimators=5, key_length=1024)
    ...     print(reg.fit(guest, y).score(guest, y) > 0.5)
    True
    """
    )

    def _encode_y(self, y):
        y = np.asarray(y, dtype=np.float64)
        top = float(np.abs(y).max()) if y.size else 0.0
        if top >= MAX_TARGET:  # (a deep "split directions do not match" error before)
            raise ValueError(
                f"y holds values up to {top:.3g} in absolute value: squared errors of "
                f"values beyond {MAX_TARGET:.0e} overflow; rescale y (e.g. divide it by a "
                "power of ten, or wrap the estimator in TransformedTargetRegressor)"
            )
        return y, HalfSquaredError()

    def _stratify(self, y):
        return None

    def predict(self, X):
        """Predicted values."""
        return self._raw_predict(X)[:, 0]
