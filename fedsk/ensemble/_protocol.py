"""The guest half of SecureBoost: who sends what, per boosting round and per layer.

Per round the guest quantises each tree's (g, h), packs (g + offset, h) of a sample
into one plaintext and encrypts it once (CRT fast path), and sends the ciphertexts to
every host. Per layer of the trees it sends one histogram request per host (the
smaller child of every split node, all trees of the round together), decrypts the
packed answers, checks them against the node totals it knows, and picks the best split
over all parties. When a host's candidate wins, the host is told only "rows of node k,
your candidate (feature j, bin b, missing side)"; it records the real threshold in its
own table and answers which rows go left. After each round the hosts persist their
records. Prediction asks each host once for its decisions on the requested rows.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..crypto import (
    EncryptedArray,
    decrypt_raw,
    encrypt_integers,
)
from ..exceptions import ProtocolError
from ..federation import Message, public_key_to_wire
from ..tree import BinMapper, LocalSource, build_histograms
from ..tree._histogram import GH_BITS
from ._gh import G_MAX_VALUES, GH_MAX_VALUES, GH_PACKING, gh_layout, node_layout, sent_bins

__all__ = ["FederatedEngine", "LocalEngine", "host_decisions"]


class LocalEngine:
    """``federation=None``: the same algorithm on the given columns, in plaintext."""

    def __init__(self, X, train_positions, max_bins):
        self.mapper = BinMapper(max_bins).fit(X[train_positions])
        binned = self.mapper.transform(X)
        self.source = LocalSource(binned, self.mapper.n_bins_total, self.mapper.missing_bin)
        self.n_features_total = X.shape[1]
        self.n_local_features = X.shape[1]

    def threshold_of(self, feature, bin_index):
        return self.mapper.threshold(feature, bin_index)

    def start_round(self, specs, active, *, same_h_is_public=False):
        pass

    def finish_round(self, n_rounds):
        pass


def _parallel_hosts(fn, items):
    """Run ``fn(item)`` for every host at once (hosts work in parallel)."""
    if len(items) == 1:
        return [fn(items[0])]
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(fn, items))


def _unpack_bits(arr, count, what, host):
    if arr.dtype != np.uint8 or arr.ndim != 1 or len(arr) != (count + 7) // 8:
        raise ProtocolError(f"{host} sent {what} of the wrong size")
    return np.unpackbits(arr, count=count).astype(bool)


class FederatedSource(LocalSource):
    """Histograms and partitions with the hosts' columns appended after the guest's."""

    def __init__(self, engine):
        super().__init__(engine.binned, engine.mapper.n_bins_total, engine.mapper.missing_bin)
        self.engine = engine

    def histograms(self, requests):
        eng = self.engine
        n_guest = eng.n_local_features
        out = []
        for spec, rows in requests:
            guest_feats = None
            if spec.features is not None:
                guest_feats = spec.features[spec.features < n_guest]
            local = build_histograms(eng.binned, rows, spec.qg, self.n_bins_total, guest_feats)
            out.append(np.zeros((eng.n_features_total, self.n_bins_total, 3), np.int64))
            out[-1][:n_guest] = local

        def ask(h):
            sess, off, nf = eng.sessions[h], eng.offsets[h], eng.host_n_features[h]
            feats = np.zeros((len(requests), nf), dtype=bool)
            for k, (spec, _) in enumerate(requests):
                if spec.features is None:
                    feats[k] = True
                else:
                    sel = spec.features[(spec.features >= off) & (spec.features < off + nf)]
                    feats[k, sel - off] = True
            rows = [r for _, r in requests]
            msg = Message(
                arrays={
                    "rows": np.concatenate(rows).astype(np.int64),
                    "offsets": np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(
                        np.int64
                    ),
                    "slots": np.array([spec.slot for spec, _ in requests], dtype=np.int64),
                    "features": feats,
                }
            )
            answer = sess.call("secureboost.histograms", msg)
            ops = answer.field("ops", dict, default={})
            for key in ("additions", "shifts", "rerandomisations"):
                if isinstance(ops.get(key), int):
                    eng.counts["host_" + key] += ops[key]
            n_packed = answer.array("n_packed", kind="iu", shape=(len(requests),), low=0)
            packed = answer.encrypted("packed", eng.public_key, length=int(n_packed.sum()))
            n_records = int(feats.sum()) * self.n_bins_total
            kept = _unpack_bits(
                answer.array("kept", kind="u", ndim=1), n_records, "kept bins", sess.name
            )
            counts = answer.array(
                "counts", kind="iu", shape=(int(kept.sum()),), low=1, high=eng.n_active + 1
            ).astype(np.int64)
            return feats, n_packed, packed, kept, counts

        answers = _parallel_hosts(ask, list(range(len(eng.sessions))))
        all_packed = EncryptedArray.concat([a[2] for a in answers]) if answers else None
        plains = decrypt_raw(eng.private_key, all_packed, n_jobs=eng.n_jobs) if answers else []
        eng.counts["decryptions"] += len(plains)
        pos = 0
        for h, (feats, n_packed, _, kept, counts) in enumerate(answers):
            off, name = eng.offsets[h], eng.sessions[h].name
            kpos = cpos = 0
            for k, (spec, rows) in enumerate(requests):
                sel = np.flatnonzero(feats[k])
                count = int(n_packed[k])
                n_rec = len(sel) * self.n_bins_total
                node_kept = kept[kpos : kpos + n_rec]
                n_kept = int(node_kept.sum())
                hist = self._decode(
                    plains[pos : pos + count],
                    spec.qg,
                    rows,
                    len(sel),
                    node_kept,
                    counts[cpos : cpos + n_kept],
                    name,
                )
                pos += count
                kpos += n_rec
                cpos += n_kept
                self._check(hist, spec.qg, rows, name)
                out[k][off + sel] = hist
        return out

    def _decode(self, plaintexts, qg, rows, n_features, kept, counts, host):
        """One node's histogram (n_features, n_bins, 3) from the host's packed answer."""
        eng = self.engine
        n_slots = len(eng.max_values)  # 1: only g was packed, every h of the round is equal
        layout, per = node_layout(
            eng.n_active, len(rows), eng.public_key.key_length, eng.max_values
        )
        sent = sent_bins(kept, n_features)
        n_sent = int(sent.sum())
        if len(plaintexts) != -(-n_sent // per):
            raise ProtocolError(
                f"{host} sent {len(plaintexts)} packed histogram ciphertexts, "
                f"expected {-(-n_sent // per)}"
            )
        try:
            records = layout.split_plaintexts(plaintexts, n_sent, per)
            slots = layout.unpack(records).astype(np.int64) if n_sent else None
        except ValueError as exc:
            raise ProtocolError(f"{host} sent a histogram that does not decode: {exc}") from None
        flat = np.zeros((n_features * self.n_bins_total, 3), dtype=np.int64)
        if n_sent:
            flat[sent, :n_slots] = slots
        flat[kept, 2] = counts
        if n_slots == 1 and len(rows):
            flat[kept, 1] = counts * qg.h[rows[0]]
        hist = flat.reshape(n_features, self.n_bins_total, 3)
        # each feature's last non-empty bin: the node's totals minus the feature's others
        f, b = np.nonzero((kept & ~sent).reshape(n_features, self.n_bins_total))
        offset = 1 << GH_BITS
        totals = np.array([qg.g[rows].sum() + offset * len(rows), qg.h[rows].sum()])[:n_slots]
        rest = totals[None, :] - hist[f, :, :n_slots].sum(axis=1)
        if ((rest < 0) | (rest > np.outer(hist[f, b, 2], eng.max_values))).any():
            raise ProtocolError(
                f"{host} sent histograms that do not add up to the node's "
                "totals: refusing to build a wrong model"
            )
        hist[f, b, :n_slots] = rest
        hist[..., 0] -= hist[..., 2] << GH_BITS  # remove the offset that kept g >= 0
        return hist

    @staticmethod
    def _check(hist, qg, rows, host):
        """Every feature partitions the same rows: its bins must add up to the node."""
        if hist.shape[0] == 0:
            return
        want = np.array([qg.g[rows].sum(), qg.h[rows].sum(), len(rows)], dtype=np.int64)
        if not (hist.sum(axis=1) == want[None, :]).all():
            raise ProtocolError(
                f"{host} sent histograms that do not add up to the node's "
                "totals: refusing to build a wrong model"
            )

    def party_of(self, record):
        return "the guest" if record is None else f"host {self.engine.sessions[record[0]].name!r}"

    def partition(self, splits):
        eng = self.engine
        results = [None] * len(splits)
        per_host = {h: [] for h in range(len(eng.sessions))}
        local = []
        for k, (_rows, split) in enumerate(splits):
            h = eng.host_of(split.feature)
            (local if h is None else per_host[h]).append(k)
        for k, res in zip(local, super().partition([splits[k] for k in local])):
            results[k] = res

        def ask(h):
            ks = per_host[h]
            if not ks:
                return h, None
            off = eng.offsets[h]
            rows = [splits[k][0] for k in ks]
            msg = Message(
                arrays={
                    "rows": np.concatenate(rows).astype(np.int64),
                    "offsets": np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(
                        np.int64
                    ),
                    "feature": np.array([splits[k][1].feature - off for k in ks], dtype=np.int64),
                    "bin": np.array([splits[k][1].bin for k in ks], dtype=np.int64),
                    "missing_left": np.array([splits[k][1].missing_left for k in ks], dtype=bool),
                }
            )
            return h, eng.sessions[h].call("secureboost.splits", msg)

        for h, answer in _parallel_hosts(ask, list(per_host)):
            if answer is None:
                continue
            ks, name = per_host[h], eng.sessions[h].name
            sizes = [len(splits[k][0]) for k in ks]
            go = _unpack_bits(
                answer.array("go_left", kind="u", ndim=1), sum(sizes), "split directions", name
            )
            recs = answer.array("records", kind="iu", shape=(len(ks),), low=0)
            # the host numbers its records 0, 1, 2, ... in the order it made them
            first = eng.host_n_records[h]
            if recs.tolist() != list(range(first, first + len(ks))):
                raise ProtocolError(
                    f"{name} numbered its new split records {recs.tolist()[:5]}, expected "
                    f"{first}..{first + len(ks) - 1}"
                )
            eng.host_n_records[h] += len(ks)
            pos = 0
            for k, size, rec in zip(ks, sizes, recs.tolist()):
                results[k] = (go[pos : pos + size], (h, rec))
                pos += size
        return results


class FederatedEngine:
    """Guest side of one federated fit: key, binning, the hosts' sessions, counters."""

    def __init__(self, sessions, X, train_positions, *, max_bins, keypair, n_jobs, model_ids=None):
        self.sessions = sessions
        self.n_jobs = n_jobs
        self.public_key, self.private_key = keypair  # fresh for this fit
        self.mapper = BinMapper(max_bins).fit(X[train_positions])
        self.binned = self.mapper.transform(X)
        self.n_local_features = X.shape[1]
        self.counts = {
            "encryptions": 0,
            "decryptions": 0,
            "host_additions": 0,
            "host_shifts": 0,
            "host_rerandomisations": 0,
        }
        self.model_ids, self.host_n_features, self.offsets = [], [], []
        self.host_n_records = []  # split records each host holds for this model
        off = X.shape[1]
        model_ids = model_ids or [None] * len(sessions)
        for sess, mid in zip(sessions, model_ids):
            answer = sess.call(
                "secureboost.setup",
                Message(
                    {
                        "public_key": public_key_to_wire(self.public_key),
                        "max_bins": int(max_bins),
                        "model_id": mid,
                    },
                    arrays={"train_positions": np.asarray(train_positions, dtype=np.int64)},
                ),
            )
            nf = answer.field("n_features", int, minimum=0)
            if nf != sess.n_features:
                raise ProtocolError(
                    f"{sess.name} announced {sess.n_features} columns when the session opened "
                    f"but set boosting up with n_features={nf}"
                )
            self.model_ids.append(answer.field("model_id", str))
            self.host_n_records.append(answer.field("n_records", int, minimum=0))
            self.host_n_features.append(nf)
            self.offsets.append(off)
            off += nf
        self.n_features_total = off
        self.source = FederatedSource(self)

    def host_of(self, feature):
        for h, (off, nf) in enumerate(zip(self.offsets, self.host_n_features)):
            if off <= feature < off + nf:
                return h
        return None

    def threshold_of(self, feature, bin_index):
        return self.mapper.threshold(feature, bin_index)

    def start_round(self, specs, active, *, same_h_is_public=False):
        """Encrypt every tree's packed (g + offset, h) once and send it to every host.

        With ``same_h_is_public`` (the loss's hessian is constant, or this is the first
        round of a fresh fit) and every sample's h equal, only g + offset is packed.
        """
        positions = np.flatnonzero(active)
        self.n_active = len(positions)
        same_h = same_h_is_public and all(
            len(np.unique(spec.qg.h[positions])) == 1 for spec in specs
        )
        self.max_values = G_MAX_VALUES if same_h else GH_MAX_VALUES
        layout, _ = gh_layout(len(positions), self.public_key.key_length, self.max_values)
        msg = Message(
            {"n_slots": len(specs), "max_values": list(self.max_values), "packing": GH_PACKING},
            arrays={"positions": positions.astype(np.int64)},
        )
        offset = 1 << GH_BITS
        for spec in specs:
            cols = np.column_stack(
                [spec.qg.g[positions] + offset, spec.qg.h[positions]][: len(self.max_values)]
            )
            enc = encrypt_integers(self.private_key, layout.pack(cols), n_jobs=self.n_jobs)
            self.counts["encryptions"] += len(enc)
            msg.add_encrypted(f"gh{spec.slot}", enc)
        _parallel_hosts(lambda s: s.call("secureboost.gradients", msg), self.sessions)

    def finish_round(self, n_rounds):
        """Ask every host to persist its records: the round is complete."""
        answers = _parallel_hosts(
            lambda s: s.call("secureboost.trees", Message({"n_rounds": n_rounds})), self.sessions
        )
        for sess, mid, n_rec, answer in zip(
            self.sessions, self.model_ids, self.host_n_records, answers
        ):
            if answer.field("model_id", str) != mid or answer.field("n_records", int) != n_rec:
                raise ProtocolError(
                    f"{sess.name} persisted model_id={answer.meta.get('model_id')!r} with "
                    f"n_records={answer.meta.get('n_records')!r}, expected {mid!r} with {n_rec}"
                )

    def existing_decisions(self, n_rows):
        """Decisions of the hosts' existing records (for ``warm_start``)."""
        return host_decisions(self.sessions, n_rows, None)


def host_decisions(sessions, n_rows, model_ids):
    """Ask every host for its decisions on the session rows: {host index: bool (n, R)}."""

    def ask(h):
        meta = {} if model_ids is None else {"model_id": model_ids[h]}
        answer = sessions[h].call("secureboost.decisions", Message(meta))
        n_rec = answer.field("n_records", int, minimum=0)
        bits = _unpack_bits(
            answer.array("decisions", kind="u", ndim=1),
            n_rows * n_rec,
            "decisions",
            sessions[h].name,
        )
        return bits.reshape(n_rows, n_rec)

    return dict(enumerate(_parallel_hosts(ask, list(range(len(sessions))))))
