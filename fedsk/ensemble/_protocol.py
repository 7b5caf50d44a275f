"""The guest half of SecureBoost: who sends what, per boosting round and per layer.

Per round the guest quantises each tree's (g, h), packs (g + offset, h) of a sample
into one plaintext and encrypts it once (CRT fast path). Per layer of the trees it sends
each host one request: the previous layer's splits that host won, and the histogram
request of this layer (the smaller child of every split node, all trees of the round
together). When a host's candidate wins, the host is told only "rows of node k, your
candidate (feature j, bin b, missing side)"; it records the real threshold in its own
table and answers which rows go left, with the histograms of the children it was asked
for (named by reference, since only it knows their rows yet). The round's ciphertexts
travel with the roots' histogram request, and the last layer's splits with the order to
persist the round's records. The guest decrypts the packed answers, checks them against
the node totals it knows, and picks the best split over all parties. Prediction asks
each host once for its decisions on the requested rows.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..crypto import (
    EncryptedArray,
    decrypt_raw,
    encrypt_integers,
)
from ..exceptions import ProtocolError
from ..federation import Message, public_key_to_wire
from ..tree import BinMapper, ChildRows, LocalSource, build_histograms, child_rows
from ..tree._histogram import GH_BITS
from ._gh import (
    G_MAX_VALUES,
    GH_MAX_VALUES,
    GH_PACKING,
    gh_layout,
    plaintext_groups,
    record_widths,
    sent_bins,
    unpack_records,
)

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

    def start_round(self, specs, active, *, n_rounds, same_h_is_public=False, next_round=False):
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

    def step(self, splits, requests, active):
        """One request per host per layer (see :meth:`LocalSource.step`).

        A host gets the previous layer's splits it won, and this layer's histogram
        requests; a child of its own split is named by reference, since only the host
        knows its rows until it answers. The first step of a round carries the round's
        gradients; the last (no requests) orders every host to persist the round. Only
        with several hosts, a child of one host's split needs a second request to the
        others, once the first answers have said which rows it holds.
        """
        eng = self.engine
        owner = [eng.host_of(split.feature) for _, split in splits]
        parts = [None] * len(splits)
        local = [k for k, h in enumerate(owner) if h is None]
        for k, res in zip(local, super().partition([splits[k] for k in local])):
            parts[k] = res

        def waits(rows, h):  # a child of another host's split: rows unknown to h for now
            return isinstance(rows, ChildRows) and owner[rows.split] not in (None, h)

        first = [[j for j, (_, r) in enumerate(requests) if not waits(r, h)] for h in eng.hosts]
        gradients, eng.pending_gradients = eng.pending_gradients, None
        if not requests:  # the round's last step: its gradients were never needed
            gradients = None

        def ask(h):
            mine = [k for k, o in enumerate(owner) if o == h]
            if requests and not (mine or first[h]):
                return [], None  # all it has to do waits for another host's answer
            msg = Message()
            if mine:
                self._add_splits(msg, h, [splits[k] for k in mine])
            if first[h]:
                own = {k: pos for pos, k in enumerate(mine)}
                self._add_requests(msg, h, requests, first[h], splits, parts, active, own)
            if gradients is not None:
                route = "secureboost.gradients"
                msg.update(gradients)
            elif mine or not requests:
                route = "secureboost.splits"
                if not requests:
                    msg.meta["n_rounds"] = eng.n_rounds
            else:
                route = "secureboost.histograms"
            answer = eng.call(h, route, msg)
            done = self._read_splits(answer, h, mine, splits) if mine else []
            if not requests:
                eng.check_persisted(h, answer)
            hist = self._read_histograms(answer, h, len(first[h])) if first[h] else None
            return done, hist

        answers = _parallel_hosts(ask, eng.hosts)
        for done, _ in answers:
            for k, res in done:
                parts[k] = res
        hists = {h: [(first[h], hist)] for h, (_, hist) in zip(eng.hosts, answers) if hist}
        # several hosts: children of one host's splits, asked of the others now
        later = {h: [j for j, (_, r) in enumerate(requests) if waits(r, h)] for h in eng.hosts}
        todo = [h for h in eng.hosts if later[h]]

        def ask_later(h):
            msg = Message()
            self._add_requests(msg, h, requests, later[h], splits, parts, active, {})
            answer = eng.call(h, "secureboost.histograms", msg)
            return self._read_histograms(answer, h, len(later[h]))

        for h, hist in zip(todo, _parallel_hosts(ask_later, todo) if todo else []):
            hists.setdefault(h, []).append((later[h], hist))
        resolved = [(spec, child_rows(r, splits, parts, active)) for spec, r in requests]
        return parts, self._histograms(resolved, hists) if requests else []

    def _add_splits(self, msg, h, splits):
        off = self.engine.offsets[h]
        rows = [r for r, _ in splits]
        msg.add_array("parent_rows", np.concatenate(rows).astype(np.int64))
        msg.add_array("parent_offsets", _offsets(rows))
        msg.add_array("feature", np.array([s.feature - off for _, s in splits], dtype=np.int64))
        msg.add_array("bin", np.array([s.bin for _, s in splits], dtype=np.int64))
        msg.add_array("missing_left", np.array([s.missing_left for _, s in splits], dtype=bool))

    def _add_requests(self, msg, h, requests, which, splits, parts, active, own):
        """Histogram request fields for ``requests[which]``; ``own``: host h's splits."""
        eng = self.engine
        off, nf = eng.offsets[h], eng.host_n_features[h]
        feats = np.zeros((len(which), nf), dtype=bool)
        rows, child_of = [], np.full(len(which), -1, dtype=np.int64)
        for pos, j in enumerate(which):
            spec, r = requests[j]
            feats[pos, self._host_features(spec, off, nf)] = True
            if isinstance(r, ChildRows) and r.split in own:
                child_of[pos] = 2 * own[r.split] + (0 if r.left else 1)
                rows.append(np.empty(0, np.int64))
            else:
                rows.append(child_rows(r, splits, parts, active))
        msg.add_array("rows", np.concatenate(rows).astype(np.int64))
        msg.add_array("offsets", _offsets(rows))
        msg.add_array("slots", np.array([requests[j][0].slot for j in which], dtype=np.int64))
        msg.add_array("features", feats)
        if (child_of >= 0).any():
            msg.add_array("child_of", child_of)

    def _read_splits(self, answer, h, mine, splits):
        eng = self.engine
        name = eng.sessions[h].name
        sizes = [len(splits[k][0]) for k in mine]
        go = _unpack_bits(
            answer.array("go_left", kind="u", ndim=1), sum(sizes), "split directions", name
        )
        recs = answer.array("records", kind="iu", shape=(len(mine),), low=0)
        # the host numbers its records 0, 1, 2, ... in the order it made them
        start = eng.host_n_records[h]
        if recs.tolist() != list(range(start, start + len(mine))):
            raise ProtocolError(
                f"{name} numbered its new split records {recs.tolist()[:5]}, expected "
                f"{start}..{start + len(mine) - 1}"
            )
        eng.host_n_records[h] += len(mine)
        out, pos = [], 0
        for k, size, rec in zip(mine, sizes, recs.tolist()):
            out.append((k, (go[pos : pos + size], (h, rec))))
            pos += size
        return out

    def _read_histograms(self, answer, h, n_nodes):
        """The parts of a host's histogram answer, still encrypted."""
        eng = self.engine
        ops = answer.field("ops", dict, default={})
        for key in ("additions", "shifts", "rerandomisations"):
            if isinstance(ops.get(key), int):
                eng.counts["host_" + key] += ops[key]
        n_packed = answer.array("n_packed", kind="iu", shape=(n_nodes,), low=0)
        packed = answer.encrypted("packed", eng.public_key, length=int(n_packed.sum()))
        kept = answer.array("kept", kind="u", ndim=1)
        counts = answer.array("counts", kind="iu", ndim=1, low=1, high=eng.n_active + 1)
        return n_packed, packed, kept, counts.astype(np.int64)

    def _histograms(self, requests, answers):
        """Every request's histogram: the guest's columns here, the hosts' decrypted."""
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
        items = [(h, which, a) for h, parts in answers.items() for which, a in parts]
        all_packed = EncryptedArray.concat([a[1] for _, _, a in items]) if items else None
        plains = decrypt_raw(eng.private_key, all_packed, n_jobs=eng.n_jobs) if items else []
        eng.counts["decryptions"] += len(plains)
        pos = 0
        for h, which, (n_packed, _, kept_bits, counts) in items:
            off, nf, name = eng.offsets[h], eng.host_n_features[h], eng.sessions[h].name
            sels = [self._host_features(requests[j][0], off, nf) for j in which]
            n_records = sum(len(sel) for sel in sels) * self.n_bins_total
            kept = _unpack_bits(kept_bits, n_records, "kept bins", name)
            if len(counts) != int(kept.sum()):
                raise ProtocolError(f"{name} sent {len(counts)} bin counts, expected {kept.sum()}")
            kpos = cpos = 0
            for j, sel, count in zip(which, sels, n_packed.tolist()):
                spec, rows = requests[j]
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
                out[j][off + sel] = hist
        return out

    @staticmethod
    def _host_features(spec, off, nf):
        """Host columns (host-local indices) a request covers."""
        if spec.features is None:
            return np.arange(nf)
        return spec.features[(spec.features >= off) & (spec.features < off + nf)] - off

    def _decode(self, plaintexts, qg, rows, n_features, kept, counts, host):
        """One node's histogram (n_features, n_bins, 3) from the host's packed answer."""
        eng = self.engine
        n_slots = len(eng.max_values)  # 1: only g was packed, every h of the round is equal
        sent = sent_bins(kept, n_features)
        n_sent = int(sent.sum())
        all_counts = np.zeros(len(kept), dtype=np.int64)
        all_counts[kept] = counts
        try:
            widths = record_widths(all_counts[sent], eng.n_active, eng.max_values)
            sizes = plaintext_groups(widths, eng.public_key.key_length)
        except ValueError as exc:
            raise ProtocolError(f"{host} sent bin counts that cannot be packed: {exc}") from None
        if len(plaintexts) != len(sizes):
            raise ProtocolError(
                f"{host} sent {len(plaintexts)} packed histogram ciphertexts, expected {len(sizes)}"
            )
        try:
            slots = unpack_records(
                plaintexts, widths, sizes, all_counts[sent], eng.n_active, eng.max_values
            )
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


def _offsets(rows):
    return np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)


class FederatedEngine:
    """Guest side of one federated fit: key, binning, the hosts' sessions, counters."""

    def __init__(
        self, sessions, X, train_positions, *, max_bins, keypair, n_jobs, model_ids=None, stock=None
    ):
        self.sessions = sessions
        self.n_jobs = n_jobs
        self.public_key, self.private_key = keypair  # fresh for this fit
        self.stock = stock  # the next round's encryptions' randomness, made on idle CPU
        self.mapper = BinMapper(max_bins).fit(X[train_positions])
        self.binned = self.mapper.transform(X)
        self.n_local_features = X.shape[1]
        self.counts = {
            "encryptions": 0,
            "encryptions_ahead": 0,  # of them, with randomness made ahead on idle CPU
            "decryptions": 0,
            "host_additions": 0,
            "host_shifts": 0,
            "host_rerandomisations": 0,
            "requests": 0,  # to the hosts while boosting (each a round trip)
        }
        self._requests_lock = threading.Lock()
        self.model_ids, self.host_n_features, self.offsets = [], [], []
        self.host_n_records = []  # split records each host holds for this model
        off = X.shape[1]
        model_ids = model_ids or [None] * len(sessions)
        for h, (sess, mid) in enumerate(zip(sessions, model_ids)):
            answer = self.call(
                h,
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
        self.hosts = list(range(len(sessions)))
        self.pending_gradients = None
        self.source = FederatedSource(self)

    def call(self, h, route, msg):
        """Send ``msg`` to host ``h`` (counted in ``counts["requests"]``)."""
        with self._requests_lock:
            self.counts["requests"] += 1
        return self.sessions[h].call(route, msg)

    def host_of(self, feature):
        for h, (off, nf) in enumerate(zip(self.offsets, self.host_n_features)):
            if off <= feature < off + nf:
                return h
        return None

    def threshold_of(self, feature, bin_index):
        return self.mapper.threshold(feature, bin_index)

    def start_round(self, specs, active, *, n_rounds, same_h_is_public=False, next_round=False):
        """Encrypt every tree's packed (g + offset, h) once, for every host.

        The ciphertexts go with the round's first request (the roots' histograms). With
        ``same_h_is_public`` (the loss's hessian is constant, or this is the first round
        of a fresh fit) and every sample's h equal, only g + offset is packed. The
        round's last request tells the hosts to persist it as round ``n_rounds``. With
        ``next_round``, the stock starts on the next round's randomness, which idle CPU
        makes while this round waits for the hosts.
        """
        positions = np.flatnonzero(active)
        self.n_active = len(positions)
        self.n_rounds = n_rounds
        same_h = same_h_is_public and all(
            len(np.unique(spec.qg.h[positions])) == 1 for spec in specs
        )
        self.max_values = G_MAX_VALUES if same_h else GH_MAX_VALUES
        layout = gh_layout(len(positions), self.max_values)
        msg = Message(
            {"n_slots": len(specs), "max_values": list(self.max_values), "packing": GH_PACKING},
            arrays={"positions": positions.astype(np.int64)},
        )
        offset = 1 << GH_BITS
        for spec in specs:
            cols = np.column_stack(
                [spec.qg.g[positions] + offset, spec.qg.h[positions]][: len(self.max_values)]
            )
            enc = encrypt_integers(
                self.private_key, layout.pack(cols), n_jobs=self.n_jobs, stock=self.stock
            )
            self.counts["encryptions"] += len(enc)
            msg.add_encrypted(f"gh{spec.slot}", enc)
        if self.stock is not None:
            self.counts["encryptions_ahead"] = self.stock.taken
            if next_round:
                self.stock.fill(len(positions) * len(specs))
        self.pending_gradients = msg

    def check_persisted(self, h, answer):
        """Host ``h`` must have persisted every record it made: the round is complete."""
        sess, mid, n_rec = self.sessions[h], self.model_ids[h], self.host_n_records[h]
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
