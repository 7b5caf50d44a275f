"""The guest's side of a federated fit or predict: open sessions and align samples."""

import numbers
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.utils._param_validation import InvalidParameterError

from ..crypto import ObfuscatorStock, generate_keypair, prepare_encryption
from ..crypto._ahead import make_keypair_ahead, take_keypair_ahead
from ..crypto._parallel import idle_workers
from ..exceptions import FedskError
from ._federation import Federation, HostClient
from ._psi import open_aligned
from ._wire import Message

__all__ = [
    "GuestSession",
    "aligned_sessions",
    "check_federated_X",
    "check_id_index",
    "check_key_and_workers",
    "check_numeric_frame",
    "columnless",
    "in_model_order",
    "sample_ids",
    "unique_ids",
]


def check_key_and_workers(estimator):
    """``key_length`` and ``n_jobs`` beyond what the parameter constraints can say."""
    name = type(estimator).__name__
    if estimator.key_length % 2:
        raise InvalidParameterError(
            f"The 'key_length' parameter of {name} must be an even number of bits (a "
            f"Paillier modulus is the product of two primes of half its length); got "
            f"{estimator.key_length}. Use 2048 (the default) or 3072."
        )
    if estimator.n_jobs == 0:
        raise InvalidParameterError(
            f"The 'n_jobs' parameter of {name} cannot be 0: use None (joblib's default), a "
            "positive number of workers, or -1 for every core."
        )


def in_model_order(sessions, host_names):
    """The sessions of a federation reordered to a fitted model's hosts (matched by name).

    A model remembers its hosts by name, so a federation that lists the same hosts in
    another order can still predict with it or continue it.
    """
    by_name = {s.name: s for s in sessions}
    return [by_name[h] for h in host_names]


def check_federated_X(X, estimator, *, predict=False, y=None, sample_weight=None):
    """With a federation, X must be a DataFrame indexed by sample IDs.

    Unique IDs to fit (each row is one sample); to predict, an ID may repeat (the same
    customer scored twice, a bootstrap resample): see :func:`unique_ids`. A ``y`` or
    ``sample_weight`` with an index of sample IDs must list them in X's order.
    """
    if not isinstance(X, pd.DataFrame):
        raise TypeError(
            f"{type(estimator).__name__} with a federation needs X as a pandas DataFrame "
            "indexed by sample ID (the IDs align your rows with the hosts' rows); got "
            f"{type(X).__name__}. In a Pipeline, use set_output(transform='pandas')."
        )
    check_id_index(X.index, "X")
    if not predict and X.index.has_duplicates:
        dup = X.index[X.index.duplicated()][:3].tolist()
        raise ValueError(
            f"X has {int(X.index.duplicated().sum())} duplicate sample IDs in its "
            f"index (e.g. {dup}); each row must have its own ID"
        )
    check_numeric_frame(X, "X")
    for values, name in ((y, "y"), (sample_weight, "sample_weight")):
        if values is not None:
            _check_aligned(values, X.index, name)


def _check_aligned(values, index, name):
    """Labels or weights indexed by sample ID must be indexed like X: they are matched to
    rows by position (as everywhere in scikit-learn), so a ``y`` holding X's IDs in
    another order would silently give rows other rows' labels. An index that holds none
    of X's IDs is no sample-ID index (e.g. a default one, or what is left of it after a
    cross-validation split): positional, as in scikit-learn."""
    v_index = getattr(values, "index", None)
    if not isinstance(v_index, pd.Index) or len(v_index) != len(index):
        return  # arrays, lists and length mismatches: validate_data has the words
    if v_index.equals(index):
        return
    if _looks_like_positions(v_index):
        if not (
            pd.api.types.is_integer_dtype(index) and _looks_like_positions(index.sort_values())
        ):
            return  # a default index: positions
        raise ValueError(
            f"{name}'s index is 0..{len(index) - 1} and X's sample IDs are the same numbers "
            f"in another order, so it is unclear whether {name} follows X's rows or X's IDs. "
            f"Pass {name}.to_numpy() if it is in X's row order, or {name}.loc[X.index] if "
            "it is indexed by sample ID"
        )
    known = v_index.isin(index)
    if not known.any():
        return
    if known.all():
        what = "in another order" if v_index.is_unique else "with some repeated"
        raise ValueError(
            f"{name} holds the sample IDs of X {what}; {name} is taken by position, so "
            f"rows would get other rows' values. Align it first: {name} = "
            f"{name}.loc[X.index]"
        )
    missing = v_index[~known][:3].tolist()
    raise ValueError(
        f"{name}'s index holds some of X's sample IDs but not all (e.g. {missing} are not "
        f"in X.index); index {name} by the same IDs as X ({name} = {name}.loc[X.index]), or "
        f"pass {name}.to_numpy() if its rows are already in X's order"
    )


def columnless(X):
    """A DataFrame without columns (a guest holding labels only) as an (n, 0) array:
    scikit-learn's checks need a dtype, which no column has. Anything else as it is."""
    if isinstance(X, pd.DataFrame) and X.shape[1] == 0:
        return np.empty((len(X), 0))
    return X


def check_id_index(index, what):
    """Sample IDs must be one flat index without missing values."""
    if isinstance(index, pd.MultiIndex):
        raise ValueError(
            f"{what} has a MultiIndex of {index.nlevels} levels as sample IDs; federated "
            "parties match rows by one ID per row: join the levels into one, e.g. "
            f"{what}.index = {what}.index.map(lambda t: '/'.join(map(str, t))) (on every "
            "party the same way)"
        )
    if index.hasnans:
        raise ValueError(
            f"{what} has {int(index.isna().sum())} rows without a sample ID (NaN in the index); "
            "give every row the ID the hosts know it by, or drop those rows"
        )


def check_numeric_frame(df, what):
    """Unique column names, numbers only, no infinity: or one error saying what to do."""
    if df.columns.has_duplicates:
        dup = df.columns[df.columns.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"{what} has duplicated column names {dup}; give every column its own name"
        )
    text = non_numeric_columns(df)
    if text:
        kinds = ", ".join(f"{c!r}: {df[c].dtype}" for c in text[:5])
        numbers = [c for c in text if _numbers_as_text(df[c])]
        hint = (
            f" Column(s) {numbers[:5]} hold numbers as text: convert them with "
            f"pd.to_numeric ({what}[col] = pd.to_numeric({what}[col]))."
            if numbers
            else ""
        )
        raise ValueError(
            f"{what} has {len(text)} non-numeric column(s) ({kinds}); federated estimators "
            "take numbers only: encode them first (e.g. OneHotEncoder or OrdinalEncoder in a "
            "Pipeline with set_output(transform='pandas')) or drop them." + hint
        )
    cols, n_inf = infinite_columns(df)
    if cols:
        raise ValueError(
            f"{what} contains infinity in column(s) {cols[:5]} ({n_inf} "
            "value(s)); replace them with finite values (NaN marks a missing value where the "
            "estimator accepts missing values)"
        )


def _numbers_as_text(col):
    if col.dtype != object and not pd.api.types.is_string_dtype(col):
        return False
    sample = col.dropna().head(1000)
    return len(sample) > 0 and pd.to_numeric(sample, errors="coerce").notna().all()


def unique_ids(X):
    """``(unique IDs in first-seen order, each row's position among them)``."""
    index = X.index
    if not index.has_duplicates:
        return index.to_numpy(), np.arange(len(index))
    uniq = index.unique()
    return uniq.to_numpy(), uniq.get_indexer(index)


def non_numeric_columns(df):
    """Columns of ``df`` that are neither numeric nor boolean (complex counts as text); a
    categorical column of numbers is numeric, and so is an ``object`` column holding only
    numbers (as for scikit-learn)."""
    return [
        c
        for c, dtype in df.dtypes.items()
        if not _is_number_dtype(dtype) and not _numbers_as_objects(df[c])
    ]


def _numbers_as_objects(col):
    """An ``object`` column of real numbers (and missing values), e.g. after a transpose."""
    if col.dtype != object:
        return False
    values = col.dropna()
    return all(isinstance(v, numbers.Real) for v in values)


def _is_number_dtype(dtype):
    if isinstance(dtype, pd.CategoricalDtype):
        return _is_number_dtype(dtype.categories.dtype)
    return (
        pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
    ) and not pd.api.types.is_complex_dtype(dtype)


def infinite_columns(df):
    """``(names of the columns holding infinity, how many infinite values)`` of a numeric df."""
    inf = np.isinf(df.to_numpy(dtype=np.float64, na_value=np.nan))
    return [str(c) for c in df.columns[inf.any(axis=0)]], int(inf.sum())


def _looks_like_positions(ids):
    ids = pd.Index(ids)
    return pd.api.types.is_integer_dtype(ids) and ids.equals(pd.RangeIndex(len(ids)))


def sample_ids(X):
    return X.index.to_numpy()


@dataclass
class GuestSession:
    """The guest's handle on one host's session."""

    client: HostClient
    session_id: str
    info: dict = field(default_factory=dict)

    @property
    def name(self):
        return self.client.name

    @property
    def n_features(self):
        return int(self.info.get("n_features", 0))

    @property
    def feature_names(self):
        return self.info.get("feature_names")

    def call(self, route_name, message=None):
        return self.client.call(route_name, self.session_id, message or Message())

    def close(self, *, discard_models=False):
        self.client.close_session(self.session_id, discard_models=discard_models)
        self.client.close()


@contextmanager
def aligned_sessions(federation, ids, *, protocol, n_jobs=None, keep_models=False):
    """Open one session per host and align ``ids`` by PSI; close them on exit.

    A host this process already aligned a superset of ``ids`` with reuses that alignment
    instead (see :func:`~fedsk.federation._psi.open_aligned`).

    Every ID must be held by every host: otherwise ``ValueError`` says how many rows
    each host lacks. Yields the list of :class:`GuestSession` in the federation's order.
    When the block raises, the hosts delete the models these sessions made, unless
    ``keep_models`` (an estimator that keeps a failed fit's completed part).
    """
    if not isinstance(federation, Federation):
        raise TypeError(f"federation must be a fedsk Federation, got {type(federation).__name__}")
    sessions, failed = [], True
    try:
        lacking = {}  # host -> positions of the rows it does not hold
        for client in federation.connect():
            sid, info, found = open_aligned(client, protocol, ids, n_jobs=n_jobs)
            sessions.append(GuestSession(client, sid, info))
            if len(found) != len(ids):
                lacking[client.name] = np.setdiff1d(np.arange(len(ids)), found)
        if lacking:
            raise ValueError(_lacking_message(ids, lacking))
        yield sessions
        failed = False  # (not reached when the block raises)
    finally:
        # a fit that failed (or was interrupted) leaves no estimator to use what the hosts
        # saved for it: they delete the models these sessions made (a continued fit's
        # model, made before, stays), unless the estimator keeps what was completed
        for s in sessions:
            with suppress(FedskError):
                s.close(discard_models=failed and not keep_models)


def _lacking_message(ids, lacking):
    """Every host's rows it does not hold, in one message (not one host per fit)."""
    index = pd.Index(ids)
    missing = np.unique(np.concatenate(list(lacking.values())))
    parts = [
        f"host {name!r} does not hold {len(pos)} (e.g. {index.take(pos[:3]).tolist()})"
        for name, pos in lacking.items()
    ]
    if len(parts) == 1:
        ((name, pos),) = lacking.items()
        head = (
            f"{len(missing)} of {len(ids)} rows of X have sample IDs that host {name!r} does "
            f"not hold (e.g. {index.take(pos[:3]).tolist()})."
        )
    else:
        head = (
            f"{len(missing)} of {len(ids)} rows of X have sample IDs that a host does not "
            "hold: " + "; ".join(parts) + "."
        )
    positions = any(len(pos) == len(ids) for pos in lacking.values()) and _looks_like_positions(ids)
    return (
        head + " Federated training and prediction use rows every party holds: drop those "
        "rows from X, or ask the host to add them to its dataset."
        + (
            " X's index is 0, 1, 2, ...: row positions rather than sample IDs? "
            "(reset_index() or a numpy round trip drops the IDs; keep them as the index.)"
            if positions
            else ""
        )
    )


@contextmanager
def keyed_sessions(
    federation, ids, *, protocol, key_length, n_jobs=None, ahead=0, keep_models=False
):
    """:func:`aligned_sessions` plus the fit's fresh Paillier key pair.

    The key pair's prime search (in a worker process when there are several: it holds
    the GIL) runs in the background while PSI aligns the samples; once the key exists,
    idle CPU starts making the randomness of the fit's first ``ahead`` encryptions,
    which the first round waits for (see ``wait_first`` of
    :class:`~fedsk.crypto.ObfuscatorStock`). With one worker, or under a joblib backend
    other than the default, the background thread gets the encryption ready instead.
    Yields ``(sessions, (public_key, private_key), stock)``, the stock the fit's
    encryptions take from (closed on exit).

    On exit, the idle CPU starts making the next fit's key pair and first obfuscators
    (:func:`~fedsk.crypto._ahead.make_keypair_ahead`), which that fit takes if they are
    ready by then: a grid search's or cross-validation's fits then start at once.
    """
    keys = Future()  # (public_key, private_key, stock)
    # the stock's workers follow joblib's configuration, which is per thread: read it here
    idle = idle_workers(n_jobs)
    made = take_keypair_ahead(key_length, n_jobs=n_jobs) if idle else None

    def keypair_then_prepare():
        try:
            pub, priv = generate_keypair(key_length, n_jobs=n_jobs)
            stock = ObfuscatorStock(priv, n_jobs=idle or 1, wait_first=True)
            stock.fill(ahead)  # (before the fit can take from it)
        except BaseException as exc:
            keys.set_exception(exc)
            return
        keys.set_result((pub, priv, stock))
        if not idle:  # no stock to wait for: tables here and in every worker
            prepare_encryption(priv, n_jobs=n_jobs)

    try:
        with ThreadPoolExecutor(max_workers=1) as background:
            if made is None:
                background.submit(keypair_then_prepare)
            else:
                made[2].fill(ahead)  # (the rest of the first round's)
                keys.set_result(made)
            with aligned_sessions(
                federation, ids, protocol=protocol, n_jobs=n_jobs, keep_models=keep_models
            ) as sessions:
                pub, priv, stock = keys.result()
                yield sessions, (pub, priv), stock
    finally:  # the background thread is done (the executor waited for it): drop the rest
        if keys.done() and keys.exception() is None:
            keys.result()[2].close()
            if idle:
                make_keypair_ahead(key_length, n_jobs=n_jobs, encryptions=ahead)
