"""The host half of SecureBoost: plain functions the party server calls.

State kept per session (in memory): the guest's public key, this party's binned
columns for the session's rows, the guest's encrypted (g, h) per tree slot, and
the split records made so far. What a trained model needs (one record per host split:
feature, threshold, missing side) is written to the model store after every boosting
round, so a finished round survives a crash and ``warm_start`` can continue from it.

One request per layer of the trees: a round's gradients come with its roots' histogram
request, and a layer's chosen splits with the next layer's histogram request (whose
nodes may be children of those splits, the rows of which only this party knows yet) or,
for the round's last layer, with the order to persist the round.

What the host sees: the guest's public key, ciphertexts, which rows are in each node
(the instance space), and which of its own (feature, bin) candidates won. It never sees
labels, gradients, the guest's features or its splits' values.
"""

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..crypto import EncryptedArray, ObfuscatorStock, packed_histograms
from ..crypto._array import histogram_additions
from ..crypto._parallel import idle_workers
from ..exceptions import BadMessageError, ConflictError
from ..federation import Message, aligned_rows, model_columns, public_key_from_wire
from ..tree import BinMapper
from ._gh import (
    G_MAX_VALUES,
    GH_MAX_VALUES,
    GH_PACKING,
    plaintext_groups,
    record_widths,
    sent_bins,
)

__all__ = ["decisions", "gradients", "histograms", "setup", "splits"]

KIND = "secureboost"
MAX_SLOTS = 256

# gets a new guest key's re-randomisation ready while the guest encrypts its first
# gradients, so that the first histogram answer does not wait for it: this party's base
# for the key, then a stock of re-randomisers made by an idle-priority worker process
# (or, with one worker, the table here). At most two keys wait at a time: a peer
# opening fits in a loop cannot queue up work (beyond that, the first histogram request
# builds the table, as it would without this).
_PREPARE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsk-prepare")
_PREPARE_SLOTS = threading.BoundedSemaphore(2)
RERANDOMISERS_AHEAD = 64  # at first; then twice the last answer's packed ciphertexts


def _prepare_in_background(public_key, state, n_jobs):
    idle = idle_workers(n_jobs)  # (joblib's configuration is this thread's)

    def prepare():
        if idle:
            stock = ObfuscatorStock(public_key, n_jobs=idle, rerandomise_only=True)
            stock.fill(RERANDOMISERS_AHEAD)
            state["rerandomisers"] = stock
        else:
            public_key.prepare_obfuscation(rerandomise_only=True)

    if _PREPARE_SLOTS.acquire(blocking=False):
        future = _PREPARE.submit(prepare)
        future.add_done_callback(lambda _: _PREPARE_SLOTS.release())


def _state(ctx):
    st = ctx.session.state.get("sb")
    if st is None:
        raise ConflictError("set up boosting (POST .../boosting) first")
    return st


def _load_records(ctx, model_id):
    """A stored model's split records, their features as this dataset's columns now."""
    meta, arrays = ctx.models.load(model_id, ctx.session.peer)
    if meta.get("kind") != KIND or meta.get("dataset") != ctx.dataset.name:
        raise ConflictError("that model was not trained by SecureBoost on this dataset")
    columns = model_columns(meta, ctx.dataset, model_id)
    feature = arrays["feature"].astype(np.int64)
    if feature.size and (feature.min() < 0 or feature.max() >= len(columns)):
        raise ConflictError(f"model {model_id} does not match this dataset's columns")
    return {
        "feature": columns[feature].astype(np.int32),
        "threshold": arrays["threshold"],
        "missing_left": arrays["missing_left"],
    }


def _empty_records():
    return {
        "feature": np.empty(0, np.int32),
        "threshold": np.empty(0),
        "missing_left": np.empty(0, bool),
    }


def setup(ctx, msg):
    """Start a fit: bin our columns on the training rows, remember the guest's key."""
    rows = aligned_rows(ctx)
    pub = public_key_from_wire(msg.field("public_key", dict), min_key_length=ctx.min_key_length)
    max_bins = msg.field("max_bins", int, minimum=2, maximum=255)
    train = msg.array("train_positions", kind="iu", ndim=1, low=0, high=len(rows))
    if len(np.unique(train)) != len(train) or len(train) < 1:
        raise BadMessageError("array 'train_positions' must be unique and non-empty")
    model_id = msg.field("model_id", (str, type(None)), default=None)
    X = ctx.dataset.X[rows]
    mapper = BinMapper(max_bins).fit(X[np.sort(train)])
    records = _load_records(ctx, model_id) if model_id else _empty_records()
    if model_id is None:
        model_id = ctx.models.create(ctx.session.peer, KIND)
    ctx.session.state["sb"] = {
        "public_key": pub,
        "mapper": mapper,
        "binned": mapper.transform(X),
        "model_id": model_id,
        "records": records,
        "n_committed": len(records["feature"]),
        "gh": {},
    }
    # last: it competes for the CPU with what is above
    _prepare_in_background(pub, ctx.session.state["sb"], ctx.n_jobs)
    return Message(
        {
            "model_id": model_id,
            "n_features": ctx.dataset.n_features,
            "n_records": len(records["feature"]),
        }
    )


def gradients(ctx, msg):
    """Receive the encrypted (g, h) records of one boosting round.

    With a histogram request (the fields of :func:`histograms`), the round's roots, the
    answer carries their histograms too.
    """
    st = _state(ctx)
    n_rows = st["binned"].shape[0]
    n_slots = msg.field("n_slots", int, minimum=1, maximum=MAX_SLOTS)
    packing = msg.field("packing", int, default=1)
    if packing != GH_PACKING:
        raise BadMessageError(
            f"the guest runs version {packing} of the SecureBoost exchange, this host "
            f"version {GH_PACKING}: run the same fedsk version on every party"
        )
    max_values = msg.field("max_values", list)
    if max_values not in (list(GH_MAX_VALUES), list(G_MAX_VALUES)):
        raise BadMessageError("field 'max_values' does not match this version's packing")
    positions = msg.array("positions", kind="iu", ndim=1, low=0, high=n_rows).astype(np.int64)
    if len(positions) == 0 or np.any(np.diff(positions) <= 0):  # int64: uint64 diffs wrap
        raise BadMessageError("array 'positions' must be strictly increasing and non-empty")
    index = np.full(n_rows, -1, dtype=np.int64)
    index[positions] = np.arange(len(positions))
    gh = {
        "index": index,
        "n_terms": len(positions),
        "max_values": tuple(max_values),
        "slots": [
            msg.encrypted(f"gh{k}", st["public_key"], length=len(positions)) for k in range(n_slots)
        ],
    }
    st["gh"] = gh
    reply = Message({"received": len(positions) * n_slots})
    if "features" in msg.arrays:  # the round's roots, in the same exchange
        _add_histograms(ctx, st, _requested_nodes(msg, st), msg, reply)
    return reply


def _nodes(msg, n_rows, rows_name="rows", offsets_name="offsets"):
    rows = msg.array(rows_name, kind="iu", ndim=1, low=0, high=n_rows).astype(np.int64)
    offsets = msg.array(offsets_name, kind="iu", ndim=1, low=0, high=len(rows) + 1)
    if (
        len(offsets) < 2
        or offsets[0] != 0
        or offsets[-1] != len(rows)
        or np.any(np.diff(offsets) < 0)
    ):
        raise BadMessageError(
            f"array {offsets_name!r} must go from 0 to len({rows_name}), non-decreasing"
        )
    return [rows[a:b] for a, b in itertools.pairwise(offsets)]


def _requested_nodes(msg, st, children=()):
    """The rows of every node of a histogram request (only rows of this round count).

    A node is given by its rows, or, with ``child_of[k] = 2 * s + side`` (side 0: left),
    as a child of split ``s`` of the same request: ``children[s]`` is that split's
    ``(parent rows, go_left)``, known only here until this answer reaches the guest.
    """
    if not st["gh"]:
        raise ConflictError("send the round's gradients before asking for histograms")
    node_rows = _nodes(msg, st["binned"].shape[0])
    child_of = msg.array(
        "child_of",
        kind="i",
        shape=(len(node_rows),),
        low=-1,
        high=2 * len(children),
        optional=True,
    )
    if child_of is None:
        return node_rows
    index = st["gh"]["index"]
    for k, ref in enumerate(child_of.tolist()):
        if ref < 0:
            continue
        if len(node_rows[k]):
            raise BadMessageError(f"node {k} is a split's child: send no rows for it")
        parent, go = children[ref // 2]
        side = parent[go] if ref % 2 == 0 else parent[~go]
        node_rows[k] = side[index[side] >= 0]
    return node_rows


def histograms(ctx, msg):
    """Encrypted, packed (feature, bin) histograms of the requested nodes.

    Answer: which (feature, bin) of each node are non-empty (``kept``, bits), how many of
    the node's rows each holds (``counts``, in the clear), and the packed (g, h) sums of
    all of them but each feature's last (``packed``, ``n_packed`` per node; the guest gets
    that one from the node's totals, see :func:`sent_bins`). Most histograms come with
    :func:`gradients` or :func:`splits` instead; this asks for the rest (children of
    another party's splits, known once its answer has reached the guest).
    """
    st = _state(ctx)
    reply = Message()
    _add_histograms(ctx, st, _requested_nodes(msg, st), msg, reply)
    return reply


def _add_histograms(ctx, st, node_rows, msg, reply):
    """Put the histograms of ``node_rows`` (see :func:`histograms`) into ``reply``."""
    gh = st["gh"]
    binned, mapper = st["binned"], st["mapper"]
    slots = msg.array(
        "slots", kind="iu", ndim=1, shape=(len(node_rows),), low=0, high=len(gh["slots"])
    )
    features = msg.array("features", kind="b", shape=(len(node_rows), binned.shape[1]))
    key_length = st["public_key"].key_length
    by_slot, kept, counts = {}, [], []
    for k, (rows, slot) in enumerate(zip(node_rows, slots.tolist())):
        idx = gh["index"][rows]
        if len(rows) == 0 or np.any(idx < 0) or len(np.unique(rows)) != len(rows):
            raise BadMessageError(f"node {k}: rows must be distinct rows of this round")
        feats = np.flatnonzero(features[k])
        # Bins no row of the node falls in are left out: the guest learns nothing from
        # that, since it is told every bin's count.
        n_bins = mapper.n_bins_total
        node_bins = binned[np.ix_(rows, feats)]
        flat = node_bins.astype(np.int64) + np.arange(len(feats)) * n_bins
        bin_counts = np.bincount(flat.ravel(), minlength=len(feats) * n_bins)
        keep = bin_counts > 0
        kept.append(keep)
        counts.append(bin_counts[keep])
        sent = sent_bins(keep, len(feats))
        widths = record_widths(bin_counts[sent], gh["n_terms"], gh["max_values"])
        spec = (idx, node_bins, sent, widths, plaintext_groups(widths, key_length))
        by_slot.setdefault(slot, []).append((k, spec))
    packed = [None] * len(node_rows)
    stock = st.get("rerandomisers")  # (once the background has made it)
    for slot, items in by_slot.items():
        out = packed_histograms(
            gh["slots"][slot],
            [spec for _, spec in items],
            mapper.n_bins_total,
            n_jobs=ctx.n_jobs,
            stock=stock,
        )
        for (k, _), enc in zip(items, out):
            packed[k] = enc
    if stock is not None:  # for the next answers, on idle CPU
        stock.fill(2 * sum(len(p) for p in packed))
    # the work done, so the guest can relate its fit time to the cryptographic floor
    ops = {
        "additions": sum(  # (bucket sums and packing: ciphertext multiplications)
            histogram_additions([spec for _, spec in items], mapper.n_bins_total)
            for items in by_slot.values()
        ),
        "shifts": int(  # every record but the first of each plaintext: its width
            sum(
                int(spec[3].sum()) - int(spec[3][np.cumsum([0, *spec[4][:-1]])].sum())
                for items in by_slot.values()
                for _, spec in items
                if len(spec[3])
            )
        ),
        "rerandomisations": int(sum(len(p) for p in packed)),
    }
    reply.meta["ops"] = ops
    reply.add_array("n_packed", np.array([len(p) for p in packed], dtype=np.int64))
    reply.add_array("kept", np.packbits(np.concatenate(kept).astype(np.uint8)))
    reply.add_array("counts", np.concatenate(counts).astype(np.uint32))  # at most n rows
    reply.add_encrypted("packed", EncryptedArray.concat(packed))


def splits(ctx, msg):
    """Record the guest's chosen candidates as our splits; say which rows go left.

    The same request may ask for the next layer's histograms (nodes may be children of
    these splits, see :func:`_requested_nodes`) or, at the round's end, carry
    ``n_rounds``: every record made so far is then persisted (the round is complete on
    both sides). Without split arrays it only does those.
    """
    st = _state(ctx)
    binned, mapper = st["binned"], st["mapper"]
    if "parent_offsets" in msg.arrays:
        parents = _nodes(msg, binned.shape[0], "parent_rows", "parent_offsets")
        n = len(parents)
        feature = msg.array("feature", kind="iu", shape=(n,), low=0, high=binned.shape[1])
        bins = msg.array("bin", kind="iu", shape=(n,), low=0, high=mapper.max_bins)
        missing_left = msg.array("missing_left", kind="b", shape=(n,))
    else:
        n, parents = 0, []
        feature, bins, missing_left = np.empty((3, 0), np.int64)
    n_rounds = msg.field("n_rounds", int, minimum=1, default=None)
    recs = st["records"]
    first = len(recs["feature"])
    new_thr, go = [], []
    for rows, f, b, ml in zip(parents, feature.tolist(), bins.tolist(), missing_left.tolist()):
        col = binned[rows, f]
        go.append(np.where(col == mapper.missing_bin, ml, col <= b))
        new_thr.append(mapper.threshold(f, b))
    bits = np.packbits(np.concatenate(go).astype(np.uint8)) if go else np.empty(0, np.uint8)
    reply = Message(arrays={"go_left": bits, "records": np.arange(first, first + n)})
    if "features" in msg.arrays:
        _add_histograms(ctx, st, _requested_nodes(msg, st, list(zip(parents, go))), msg, reply)
    # the records change only once the whole request has been answered
    st["records"] = {
        "feature": np.concatenate([recs["feature"], feature.astype(np.int32)]),
        "threshold": np.concatenate([recs["threshold"], np.asarray(new_thr, dtype=np.float64)]),
        "missing_left": np.concatenate([recs["missing_left"], missing_left.astype(bool)]),
    }
    if n_rounds is not None:
        _persist(ctx, st, n_rounds)
        reply.meta.update(model_id=st["model_id"], n_records=st["n_committed"])
    return reply


def _persist(ctx, st, n_rounds):
    """Write every record made so far to the model store."""
    recs = st["records"]
    ctx.models.save(
        st["model_id"],
        ctx.session.peer,
        {
            "kind": KIND,
            "dataset": ctx.dataset.name,
            "n_features": ctx.dataset.n_features,
            "columns": ctx.dataset.columns,  # (host-side: records follow them by name)
            "n_rounds": n_rounds,
            "n_records": len(recs["feature"]),
        },
        recs,
    )
    st["n_committed"] = len(recs["feature"])


def decisions(ctx, msg):
    """For every record of a model, does each of the session's rows go left?

    Prediction needs nothing encrypted: the host answers with these bits only, one
    request per prediction call.
    """
    rows = aligned_rows(ctx)
    model_id = msg.field("model_id", (str, type(None)), default=None)
    if model_id is not None:
        recs = _load_records(ctx, model_id)
    else:
        recs = _state(ctx)["records"]
    X = ctx.dataset.X[rows]
    feat = recs["feature"].astype(np.int64)
    if feat.size and feat.max() >= X.shape[1]:
        raise ConflictError("the model does not match this dataset's columns")
    vals = X[:, feat]
    go = np.where(np.isnan(vals), recs["missing_left"][None, :], vals <= recs["threshold"][None, :])
    return Message(
        {"n_records": len(feat)}, arrays={"decisions": np.packbits(go.astype(np.uint8).ravel())}
    )
