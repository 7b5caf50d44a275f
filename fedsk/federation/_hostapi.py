"""What a host half of a protocol receives from the party server.

Host halves are plain functions ``handler(ctx, msg) -> Message``. They read the
request from ``msg`` (validated accessors), keep per-session state in
``ctx.session.state``, persist what a trained model needs through ``ctx.models`` and
raise :class:`~fedsk.exceptions.RequestError` subclasses for anything they refuse.
"""

from dataclasses import dataclass, field

import numpy as np

__all__ = ["HostContext", "HostDataset", "HostSession", "ModelStoreAPI"]


@dataclass
class HostDataset:
    """A host's dataset: sample IDs and numeric feature columns.

    ``feature_names`` is ``None`` when the host does not publish its column names; then
    peers only ever see column positions.
    """

    name: str
    ids: np.ndarray
    X: np.ndarray  # float64, shape (n_rows, n_features), NaN = missing
    feature_names: list | None = None

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


__all__ += ["aligned_rows"]
