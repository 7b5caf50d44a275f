"""The model store: each host's half of every trained model, one file per model.

A model is a single ``.npz`` file (numeric arrays plus a JSON metadata array), written
atomically (temp file, fsync, rename), read back with ``allow_pickle=False``. Each
model belongs to the peer that trained it; another peer is told it does not exist.
Retention keeps at most ``max_models`` per peer (oldest first out) and, optionally,
drops models older than ``max_age_days``; it runs at start and whenever a new model is
written, from the models' metadata (cached per file until the file changes).

A file that cannot be read as a model (truncated, empty, not a ``.npz``: a partial
restore, a disk error) concerns only its own model: listing and retention skip it with
a warning in the server log (it is neither counted nor deleted), and a request for that
model is a JSON 409 saying what to do.
"""

import contextlib
import io
import json
import logging
import re
import secrets
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

from fedsk.exceptions import NotFoundError
from fedsk.federation import ModelStoreAPI

from ._storage import StorageError, atomic_write, check_writable

__all__ = ["UNFINISHED", "ModelStore", "delete_model_file", "describe_models"]

# meta key of a model saved during a fit whose session has not closed yet: the session
UNFINISHED = "unfinished_session"

_ID = re.compile(r"^[0-9a-f]{24}$")
# what reading a damaged file raises: zipfile.BadZipFile (truncated), EOFError (empty),
# ValueError (not a .npz, or bad JSON), KeyError (no metadata), TypeError (metadata of
# the wrong shape)
_DAMAGED = (zipfile.BadZipFile, EOFError, ValueError, KeyError, TypeError)
log = logging.getLogger("party_server")


def _created(meta):
    created = meta.get("created")
    return created if isinstance(created, (int, float)) else 0


def _read_model(path, *, meta_only=False):
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):  # (a .npy file: one array)
        raise ValueError("not a .npz archive")
    with data:
        names = ["__meta__"] if meta_only else data.files
        arrays = {k: data[k] for k in names}
    meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    if not isinstance(meta, dict):
        raise TypeError("the model's metadata is not a JSON object")
    return meta, arrays


_DESCRIBED = ("owner", "kind", "dataset", "created", "updated")


def describe_models(root):
    """Every model file of a store, for its operator (``party-server models list``):
    ID, owner, kind, dataset, times, size and whether it can be read; oldest first."""
    out = []
    for path in Path(root).glob("*.npz"):
        if not _ID.match(path.stem):
            continue
        try:
            info = {"model_id": path.stem, "bytes": path.stat().st_size, "state": "ok"}
            meta, _ = _read_model(path)
        except FileNotFoundError:  # deleted meanwhile
            continue
        except (OSError, *_DAMAGED) as exc:
            info["state"] = f"damaged ({type(exc).__name__})"
        else:
            info.update({k: meta.get(k) for k in _DESCRIBED})
            if meta.get(UNFINISHED):  # (see the server's _SessionModels)
                info["state"] = "unfinished"
        out.append(info)
    return sorted(out, key=_created)


def delete_model_file(root, model_id):
    """Delete one model's file (``party-server models delete``); LookupError saying why not.

    The server reads models from disk at every use, so this works while it runs: the
    peer's next request for that model is told it is unknown.
    """
    if not isinstance(model_id, str) or not _ID.match(model_id):
        raise LookupError(
            f"{model_id!r} is not a model ID (24 hex digits, as party-server models list shows)"
        )
    path = Path(root) / f"{model_id}.npz"
    try:
        path.unlink()
    except FileNotFoundError:
        raise LookupError(f"there is no model {model_id} in {root}") from None
    except OSError as exc:
        raise LookupError(f"cannot delete {path}: {exc.strerror or exc}") from None


class ModelStore(ModelStoreAPI):
    def __init__(self, root, *, max_models=100, max_age_days=None):
        self.root = Path(root)
        check_writable(self.root)
        self.max_models = max_models
        self.max_age_days = max_age_days
        self._lock = threading.Lock()
        self._pushed_out = threading.local()  # models max_models removed in this thread
        self._warned = set()  # unreadable files already in the server log
        # metadata of the files listed before, by name: (mtime_ns, size, inode, meta)
        self._metas = {}
        for tmp in self.root.glob(".tmp-*"):  # left by a crash mid-write: never a model
            tmp.unlink(missing_ok=True)
        self._apply_retention(None)  # models that expired while the server was down

    def _path(self, model_id):
        if not isinstance(model_id, str) or not _ID.match(model_id):
            raise NotFoundError("unknown model")
        return self.root / f"{model_id}.npz"

    def create(self, peer, kind):
        return secrets.token_hex(12)

    def _read(self, path):
        return _read_model(path)

    def _meta(self, path):
        """A model file's metadata; read again only when the file changed."""
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._metas.get(path.name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        meta, _ = _read_model(path, meta_only=True)
        self._metas[path.name] = (stamp, meta)
        while len(self._metas) > 4 * self.max_models + 1024:  # (files deleted meanwhile)
            self._metas.pop(next(iter(self._metas)))
        return meta

    def _meta_checked(self, model_id):
        return self._read_checked(model_id, read=self._meta)

    def _read_checked(self, model_id, *, read=None):
        """``_read`` of a model by ID, its failures as answers for the peer."""
        try:
            return (read or self._read)(self._path(model_id))
        except FileNotFoundError:
            raise NotFoundError(f"unknown model {model_id}") from None
        except OSError as exc:
            raise StorageError(
                f"cannot read model {model_id} ({exc.strerror or exc}); the host's operator "
                "must make its state directory readable again"
            ) from None
        except _DAMAGED as exc:
            self._warn_unreadable(self._path(model_id), exc)
            raise StorageError(
                f"model {model_id} is damaged on disk ({type(exc).__name__}); the host's "
                "operator must restore it from a backup, or you fit it again",
                code="model_damaged",
            ) from None

    def save(self, model_id, peer, meta, arrays):
        """Write a model. Retention runs when a new model is written (a model written
        again, e.g. after every boosting round, adds none)."""
        path = self._path(model_id)
        with self._lock:
            created = time.time()
            new = not path.exists()
            if not new:
                old = self._meta_checked(model_id)  # (whose it is must be known)
                if old.get("owner") != peer:
                    raise NotFoundError("unknown model")
                created = old.get("created", created)
            full = dict(meta, model_id=model_id, owner=peer, created=created, updated=time.time())
            buf = io.BytesIO()
            payload = {k: np.asarray(v) for k, v in arrays.items()}
            payload["__meta__"] = np.frombuffer(json.dumps(full).encode(), dtype=np.uint8)
            np.savez(buf, **payload)
            atomic_write(path, buf.getvalue())
            if new:
                self._apply_retention(peer)

    def load(self, model_id, peer):
        meta, arrays = self._read_checked(model_id)
        if meta.get("owner") != peer:
            raise NotFoundError(f"unknown model {model_id}")
        if self._expired(meta, time.time()):  # (retention runs when models are saved)
            self._unlink(model_id)
            raise NotFoundError(
                f"unknown model {model_id}: it expired (this host keeps models "
                f"{self.max_age_days:g} days after their last update)"
            )
        return meta, arrays

    def delete(self, model_id, peer):
        self.load(model_id, peer)
        with self._lock:
            self._unlink(model_id)

    def _unlink(self, model_id):
        try:
            self._path(model_id).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot delete model {model_id} ({exc.strerror or exc}); the host's operator "
                "must make its state directory writable again"
            ) from None

    def _expired(self, meta, now):
        if self.max_age_days is None:
            return False
        return meta.get("updated", now) < now - self.max_age_days * 86400

    def list(self, peer=None):
        """Metadata of every model (of ``peer`` if given), oldest first."""
        out = []
        for path in self.root.glob("*.npz"):
            if not _ID.match(path.stem):  # not a model's name: never served, never deleted
                continue
            try:
                meta = self._meta(path)
            except FileNotFoundError:  # deleted meanwhile
                continue
            except (OSError, *_DAMAGED) as exc:  # one bad file is no reason to stop
                self._warn_unreadable(path, exc)
                continue
            if peer is None or meta.get("owner") == peer:
                out.append(dict(meta, model_id=path.stem))  # (the file's, for retention)
        return sorted(out, key=_created)

    def _warn_unreadable(self, path, exc):
        key = (path.name, type(exc).__name__)
        if key in self._warned:  # once per file: retention lists at every new model
            return
        self._warned.add(key)
        log.warning(
            "model file %s cannot be read (%s: %s); it is left out of listing and retention. "
            "Restore it from a backup, or move it out of %s (its model is then gone)",
            path,
            type(exc).__name__,
            exc,
            self.root,
        )

    def _apply_retention(self, peer):
        """Delete ``peer``'s expired models and its oldest beyond ``max_models``
        (every peer's expired ones with ``peer=None``)."""
        models = self.list(peer)
        now = time.time()
        doomed = [m for m in models if self._expired(m, now)]
        keep = [m for m in models if m not in doomed]
        pushed = []
        if peer is not None and len(keep) > self.max_models:
            pushed = keep[: len(keep) - self.max_models]
        for m in doomed + pushed:
            with contextlib.suppress(OSError):  # (a later save or load tries again)
                self._path(m["model_id"]).unlink(missing_ok=True)
        if pushed:
            log.info("peer %s: %d model(s) over max_models removed", peer, len(pushed))
            self._pushed_out.count = self.pushed_out_count() + len(pushed)

    def pushed_out_count(self, *, reset=False):
        """How many models ``max_models`` removed during this thread's saves (the request
        being served): the peer is told, since its estimators using them stop working."""
        count = getattr(self._pushed_out, "count", 0)
        if reset:
            self._pushed_out.count = 0
        return count
