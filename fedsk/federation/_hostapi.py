"""What a host half of a protocol receives from the party server.

Host halves are plain functions ``handler(ctx, msg) -> Message``. They read the
request from ``msg`` (validated accessors), keep per-session state in
``ctx.session.state``, persist what a trained model needs through ``ctx.models`` and
raise :class:`~fedsk.exceptions.RequestError` subclasses for anything they refuse.
"""

import json
import logging
from dataclasses import dataclass, field

import numpy as np

_log = logging.getLogger("party_server")

__all__ = ["HostContext", "HostDataset", "HostSession", "ModelStoreAPI", "names_too_long"]

# published column names travel in the JSON header of a session's first answer (headers
# are at most 1 MiB): this leaves room for everything else in it
MAX_NAMES_BYTES = 512 * 1024


def names_too_long(names):
    """None, or why ``names`` are too long to publish (what a message says to do)."""
    size = len(json.dumps([str(c) for c in names]).encode())
    if size <= MAX_NAMES_BYTES:
        return None
    return (
        f"the names of its {len(names)} columns take {size / 2**20:.1f} MiB, more than a "
        f"session's first answer carries ({MAX_NAMES_BYTES // 1024} KiB)"
    )


@dataclass
class HostDataset:
    """A host's dataset: sample IDs and numeric feature columns.

    ``feature_names`` is ``None`` when the host does not publish its column names; then
    peers only ever see column positions. ``columns`` are the names of the columns all
    the same, for the host alone: a stored model remembers them, so that a data file
    exported again with its columns in another order still gets each model's columns
    (see :func:`model_columns`); ``None`` if unknown.
    """

    name: str
    ids: np.ndarray
    X: np.ndarray  # float64, shape (n_rows, n_features), NaN = missing
    feature_names: list | None = None
    columns: list | None = None

    @property
    def n_rows(self):
        return int(self.X.shape[0])

    @property
    def n_features(self):
        return int(self.X.shape[1])

    def describe(self):
        """What the host tells a peer about this dataset when a session opens."""
        out = {"dataset": self.name, "n_features": self.n_features}
        if self.feature_names is not None:
            out["feature_names"] = list(self.feature_names)
        return out


@dataclass
class HostSession:
    """One peer's session: an ID, its dataset, and protocol state kept in memory."""

    id: str
    peer: str
    dataset: str
    state: dict = field(default_factory=dict)


class ModelStoreAPI:
    """The model store interface a host half may use (implemented by the server)."""

    def create(self, peer, kind):  # pragma: no cover - interface
        """Reserve a new model ID owned by ``peer``."""
        raise NotImplementedError

    def save(self, model_id, peer, meta, arrays):  # pragma: no cover - interface
        """Atomically (re)write a model: JSON ``meta`` and numeric ``arrays``."""
        raise NotImplementedError

    def load(self, model_id, peer):  # pragma: no cover - interface
        """Return ``(meta, arrays)``; raise NotFoundError for an unknown or foreign model."""
        raise NotImplementedError


@dataclass
class HostContext:
    """Everything a host half needs for one request."""

    party: str
    session: HostSession
    dataset: HostDataset
    models: ModelStoreAPI
    n_jobs: int = 1
    min_key_length: int = 2048


def aligned_rows(ctx):
    """The host's dataset rows of this session, in the agreed intersection order."""
    from ..exceptions import ConflictError

    rows = ctx.session.state.get("rows")
    if rows is None:
        raise ConflictError("align samples (psi, intersection) before this request")
    return rows


def model_columns(meta, dataset, model_id):
    """Where the columns a stored model was trained on are in ``dataset`` now, by name.

    A model's ``meta["columns"]`` names its columns (host-side only). The dataset's file
    may have been exported again since, with its columns in another order or with more
    of them: each model column is found by its name. One that is gone, or a model
    without names whose number of columns differs, is a :class:`ConflictError`: the
    host would otherwise apply thresholds or coefficients to other columns. The names
    go to the host's log, not to the peer (they may be unpublished).
    """
    from ..exceptions import ConflictError

    saved = meta.get("columns")
    if saved is None or dataset.columns is None:
        n = meta.get("n_features", dataset.n_features)
        if n != dataset.n_features:
            raise ConflictError(
                f"model {model_id} was trained on {n} of this host's columns; its dataset "
                f"{dataset.name!r} has {dataset.n_features} now (its data file changed "
                "since): fit the model again"
            )
        return np.arange(n)
    where = {str(c): j for j, c in enumerate(dataset.columns)}
    gone = [c for c in saved if c not in where]
    if gone:
        _log.warning(
            "model %s: columns %s of dataset %r are gone from its data file",
            model_id,
            gone,
            dataset.name,
        )
        raise ConflictError(
            f"{len(gone)} of the {len(saved)} host columns model {model_id} was trained on "
            f"are no longer in dataset {dataset.name!r} (its data file changed since; the "
            "host's log names them): fit the model again, or ask the host's operator to "
            "restore them"
        )
    return np.array([where[c] for c in saved], dtype=np.int64)


__all__ += ["aligned_rows", "model_columns"]
