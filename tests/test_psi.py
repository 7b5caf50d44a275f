"""Private set intersection: correctness, what crosses the wire, multi-host."""

import numpy as np
import pandas as pd
import pytest

from fedsk.federation import InProcessFederation, Message
from fedsk.federation._psi import align, canonical_id, hash_ids
from party_server import create_app

from .conftest import TOKEN, write_host


class Recorder:
    """Wrap a transport and keep every request and answer message."""

    def __init__(self, transport):
        self.inner, self.sent, self.received = transport, [], []
        self.party, self.url = transport.party, transport.url

    def request(self, method, path, message=None, *, request_id=None):
        self.sent.append((path, message))
        answer = self.inner.request(method, path, message, request_id=request_id)
        self.received.append((path, answer))
        return answer


def test_canonical_ids_match_across_types():
    assert canonical_id(5) == canonical_id(np.int64(5)) == canonical_id(5.0) == canonical_id("5")
    assert canonical_id("a") != canonical_id("b")
    assert (hash_ids(["x"], "s1") != hash_ids(["x"], "s2")).any()
    # durations (numpy's are an integer type, and int() of one failed) match whatever
    # their unit, and are not the integer of their count
    one = pd.Timedelta(seconds=1)
    assert canonical_id(np.timedelta64(1, "s")) == canonical_id(one.to_timedelta64())
    assert canonical_id(one.to_pytimedelta()) == canonical_id(one) == b"P0DT0H0M1S"
    assert canonical_id(np.timedelta64(1, "s")) != canonical_id(1)
    assert canonical_id(2**70) == canonical_id(str(2**70))  # (LocalFederation writes it so)


@pytest.mark.integration
@pytest.mark.parametrize(
    "ids",
    [
        pd.to_timedelta(np.arange(40), unit="s"),  # a TypeError deep in PSI
        pd.Index([2**70 + i for i in range(40)], dtype=object),  # pyarrow's OverflowError
    ],
    ids=["timedelta", "int-beyond-64-bits"],
)
def test_local_federation_fits_with_unusual_ids(ids):
    from fedsk import LocalFederation, SecureBoostClassifier

    rng = np.random.default_rng(0)
    guest = pd.DataFrame({"a": rng.normal(size=40)}, index=ids)
    host = pd.DataFrame({"c": rng.normal(size=40)}, index=ids[::-1])
    y = pd.Series((guest["a"] + host["c"].loc[ids] > 0).astype(int).to_numpy(), index=ids)
    params = dict(n_estimators=2, max_depth=2, random_state=0)
    with LocalFederation(hosts={"h": host}) as fed:
        proba = SecureBoostClassifier(federation=fed, key_length=1024, **params).fit(guest, y)
        proba = proba.predict_proba(guest)
    joined = guest.join(host)
    ref = SecureBoostClassifier(**params).fit(joined, y).predict_proba(joined)
    np.testing.assert_array_equal(proba, ref)


@pytest.mark.parametrize("kind", ["str", "int"])
def test_intersection_is_correct(tmp_path, kind):
    rng = np.random.default_rng(3)
    host_ids = rng.choice(5000, size=300, replace=False)
    guest_ids = np.concatenate(
        [
            rng.choice(host_ids, 120, replace=False),
            rng.choice(np.arange(5000, 9000), 80, replace=False),
        ]
    )
    rng.shuffle(guest_ids)
    conv = (lambda a: [f"id-{v}" for v in a]) if kind == "str" else (lambda a: list(a))
    df = pd.DataFrame({"x": rng.normal(size=300)}, index=conv(host_ids))
    app = create_app(write_host(tmp_path, df))
    [client] = InProcessFederation({"h": (app, "customers", TOKEN)}).connect()
    sid, info = client.open_session("psi-test")
    guest = conv(guest_ids)
    pos = align(client, sid, guest)
    want = [i for i, g in enumerate(guest_ids) if g in set(host_ids)]
    assert pos.tolist() == want
    # the host recorded the matching rows in the guest's order
    state = app.extensions["fedsk"].sessions.get(sid, "bank").session.state
    assert [df.index[r] for r in state["rows"]] == [guest[i] for i in pos]


def _aligned_host_ids(app, guest_ids):
    """Run PSI; return the positions matched and the host IDs of the rows it recorded."""
    [client] = InProcessFederation({"h": (app, "customers", TOKEN)}).connect()
    sid, _ = client.open_session("psi-test")
    pos = align(client, sid, guest_ids)
    state = app.extensions["fedsk"].sessions.get(sid, "bank").session.state
    dataset = app.extensions["fedsk"].datasets["customers"]
    return pos.tolist(), [dataset.ids[r] for r in state["rows"]]


def test_host_csv_ids_are_read_as_written(tmp_path):
    """A host CSV's IDs are text: "00017" is not 17, and "007" and "7" are two IDs."""
    ids = ["00017", "007", "7", "17", "0042"]
    df = pd.DataFrame({"x": np.arange(5.0)}, index=ids)
    app = create_app(write_host(tmp_path, df))
    assert list(app.extensions["fedsk"].datasets["customers"].ids) == ids
    # a guest with the same text finds exactly those rows
    pos, rows = _aligned_host_ids(app, ["7", "00017", "nobody", "0042", "007"])
    assert pos == [0, 1, 3, 4] and rows == ["7", "00017", "0042", "007"]
    # a guest with integer IDs matches the host's IDs written as those integers
    pos, rows = _aligned_host_ids(app, [7, 17, 42])
    assert pos == [0, 1] and rows == ["7", "17"]


def test_host_parquet_ids_keep_their_type(tmp_path):
    pytest.importorskip("pyarrow")
    df = pd.DataFrame({"customer_id": [17, 7, 42], "x": [1.0, 2.0, 3.0]})
    cfg = write_host(tmp_path, df.set_index("customer_id"))
    df.to_parquet(tmp_path / "ids.parquet", index=False)
    cfg["datasets"]["customers"]["path"] = str(tmp_path / "ids.parquet")
    app = create_app(cfg)
    assert app.extensions["fedsk"].datasets["customers"].ids.dtype == np.int64
    pos, rows = _aligned_host_ids(app, ["7", 42, np.int64(17)])
    assert pos == [0, 1, 2] and rows == [7, 42, 17]


def test_only_curve_points_cross(inproc, host_df):
    [client] = inproc.connect()
    rec = Recorder(client.transport)
    client.transport = rec
    sid, _ = client.open_session("psi-test")
    guest_ids = list(host_df.index[:30]) + ["zz-not-there"]
    align(client, sid, guest_ids)
    id_bytes = [canonical_id(v) for v in list(host_df.index) + guest_ids]
    for path, msg in rec.sent + rec.received:
        for name, arr in msg.arrays.items():
            raw = arr.tobytes()
            assert not any(b in raw for b in id_bytes if len(b) > 3), (path, name)
        assert not any(str(v) in str(msg.meta) for v in guest_ids)
    # shapes: only 32-byte points and, at the end, positions
    exch = [m for p, m in rec.received if p.endswith("/psi")][0]
    assert exch.arrays["double"].shape == (31, 32) and exch.arrays["host"].shape == (60, 32)


def test_host_refuses_bad_psi_input(inproc):
    [client] = inproc.connect()
    sid, _ = client.open_session("psi-test")
    from fedsk.exceptions import ProtocolError

    with pytest.raises(ProtocolError, match="points"):
        client.call("psi.exchange", sid, Message(arrays={"points": np.zeros((3, 31), np.uint8)}))
    with pytest.raises(ProtocolError, match="low order"):
        client.call("psi.exchange", sid, Message(arrays={"points": np.zeros((2, 32), np.uint8)}))
    with pytest.raises(ProtocolError, match="before"):
        client.call("psi.intersection", sid, Message(arrays={"host_indices": np.arange(2)}))


def test_multi_host(tmp_path):
    rng = np.random.default_rng(5)
    ids = [f"u{i}" for i in range(100)]
    apps = {}
    for name, keep in [("a", ids[:70]), ("b", ids[30:])]:
        df = pd.DataFrame({"v": rng.normal(size=len(keep))}, index=keep)
        apps[name] = (create_app(write_host(tmp_path / name, df, name=name)), "customers", TOKEN)
    clients = InProcessFederation(apps).connect()
    got = {}
    for c in clients:
        sid, _ = c.open_session("psi-test")
        got[c.name] = set(align(c, sid, ids).tolist())
    assert got["a"] == set(range(70)) and got["b"] == set(range(30, 100))


def test_federation_intersect_reports_the_overlap(inproc, host_df):
    ids = list(host_df.index[:10]) + ["nobody-1", "nobody-2"]
    masks = inproc.intersect(ids)
    assert list(masks) == ["insurer"]
    assert masks["insurer"].tolist() == [True] * 10 + [False, False]


def test_host_starts_its_half_when_the_session_opens(tmp_path, monkeypatch):
    """The host's own points are computed in the background from the session's opening;
    the exchange uses them (a second exchange of the session starts afresh)."""
    from fedsk.federation import _psi

    rng = np.random.default_rng(5)
    df = pd.DataFrame({"x": rng.normal(size=50)}, index=[f"id-{i}" for i in range(50)])
    app = create_app(write_host(tmp_path, df))
    [client] = InProcessFederation({"h": (app, "customers", TOKEN)}).connect()
    sid, _ = client.open_session("psi-test")
    state = app.extensions["fedsk"].sessions.get(sid, "bank").session.state
    key, perm, ours = state["psi_own"].result(10)
    assert sorted(perm) == list(range(50)) and ours.shape == (50, 32)

    def not_again(*args, **kwargs):
        raise AssertionError("the exchange computed the host's points again")

    monkeypatch.setattr(_psi, "_own_points", not_again)
    guest = [f"id-{i}" for i in range(20, 80)]
    assert align(client, sid, guest).tolist() == list(range(30))
    monkeypatch.undo()
    assert "psi_own" not in state
    assert align(client, sid, guest).tolist() == list(range(30))  # computed in the exchange


def test_host_prepares_at_most_two_psi_halves_at_a_time(monkeypatch):
    import threading

    from fedsk.federation import _psi

    started, release = [], threading.Event()

    def slow(*args, **kwargs):
        started.append(1)
        release.wait(10)

    class Ctx:  # what host_open reads
        dataset, n_jobs = None, 1

        def __init__(self, k):
            self.session = type("S", (), {"id": f"s{k}", "state": {}})()

    _psi._OWN.submit(lambda: None).result(10)  # earlier sessions' halves are done
    monkeypatch.setattr(_psi, "_own_points", slow)
    contexts = [Ctx(k) for k in range(5)]
    for ctx in contexts:
        _psi.host_open(ctx)
    assert [("psi_own" in c.session.state) for c in contexts] == [True, True] + [False] * 3
    release.set()
    for ctx in contexts[:2]:
        ctx.session.state["psi_own"].result(10)
    _psi._OWN.submit(lambda: None).result(10)  # the queue has drained
    assert len(started) == 2
    assert _psi._OWN_SLOTS.acquire(blocking=False)  # slots are given back
    _psi._OWN_SLOTS.release()


def test_an_alignment_serves_its_own_peer_on_its_own_dataset_until_it_expires(
    tmp_path, monkeypatch
):
    from fedsk.exceptions import ProtocolError
    from fedsk.federation import _psi

    rng = np.random.default_rng(4)
    df = pd.DataFrame({"x": rng.normal(size=50)}, index=[f"id-{i}" for i in range(50)])
    cfg = write_host(tmp_path, df)
    cfg["peers"]["rival"] = {"token": "rival-token-0123456789"}
    app = create_app(cfg)
    other = create_app(write_host(tmp_path / "other", df))  # the same data, another server
    state = app.extensions["fedsk"]
    [bank] = InProcessFederation({"h": (app, "customers", TOKEN)}).connect()
    [rival] = InProcessFederation({"h": (app, "customers", "rival-token-0123456789")}).connect()
    [elsewhere] = InProcessFederation({"h": (other, "customers", TOKEN)}).connect()
    guest = [f"id-{i}" for i in (40, 3, 77, 12, 25)]  # id-77 is not there
    sid, _ = bank.open_session("psi-test")
    found, handle = _psi._align(bank, sid, guest)
    assert found.tolist() == [0, 1, 3, 4] and isinstance(handle, str)
    # positions within the alignment, in this session's order
    sid, info = bank.open_session("psi-test", alignment=handle, positions=[3, 0, 2])
    assert info["aligned"] == 3
    rows = state.sessions.get(sid, "bank").session.state["rows"]
    assert [df.index[r] for r in rows] == ["id-25", "id-40", "id-12"]
    assert "psi_own" not in state.sessions.get(sid, "bank").session.state  # (no PSI half)
    # another peer's handle, or one this server never gave, is as good as unknown: PSI
    for client in (rival, elsewhere):
        sid, info = client.open_session("psi-test", alignment=handle, positions=[0])
        assert info["aligned"] == 0
        assert _psi.align(client, sid, guest).tolist() == [0, 1, 3, 4]
    with pytest.raises(ProtocolError, match="positions") as err:
        bank.open_session("psi-test", alignment=handle, positions=[4])  # 4 rows aligned
    assert err.value.status == 400
    monkeypatch.setattr(_psi, "ALIGNMENT_TTL", 0.0)
    assert bank.open_session("psi-test", alignment=handle, positions=[0])[1]["aligned"] == 0


def test_a_session_reuses_an_alignment_only_for_ids_it_holds_all_of(tmp_path):
    from fedsk.federation._psi import open_aligned

    df = pd.DataFrame({"x": np.arange(30.0)}, index=[f"r{i}" for i in range(30)])
    app = create_app(write_host(tmp_path / "reuse", df))
    [client] = InProcessFederation({"reuse-host": (app, "customers", TOKEN)}).connect()
    rec = client.transport = Recorder(client.transport)

    def psi_runs(ids):
        before = len(rec.sent)
        sid, _, found = open_aligned(client, "psi-test", ids)
        rows = app.extensions["fedsk"].sessions.get(sid, "bank").session.state["rows"]
        held = [i for i in ids if i in set(df.index)]
        assert [df.index[r] for r in rows] == held and len(found) == len(held)
        return any(path.endswith("/psi") for path, _ in rec.sent[before:])

    ids = [f"r{i}" for i in range(0, 30, 2)] + ["gone"]
    assert psi_runs(ids)
    assert not psi_runs(ids[:-1][::-1])  # held rows only, in another order: reused
    assert not psi_runs(ids[3:7])
    assert psi_runs(ids)  # "gone" is not in the alignment (the host does not hold it)
    assert psi_runs(["r1", "r2"])  # r1 was never aligned
    assert not psi_runs(["r2"])  # (aligned just now)
