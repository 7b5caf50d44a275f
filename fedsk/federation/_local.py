"""LocalFederation: real party-server processes on 127.0.0.1, for simulation and tests."""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

import numpy as np
import pandas as pd

from ..exceptions import PartyUnavailableError
from ._federation import Federation, check_host_name
from ._guest import check_id_index, check_numeric_frame
from ._hostapi import names_too_long
from ._transport import ping

__all__ = ["LocalFederation"]


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs, tmpdir):
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 5
    for proc in procs.values():
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    procs.clear()
    if tmpdir is not None:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _toml_str(value):
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class LocalFederation(Federation):
    """Start one real party server per host on 127.0.0.1 and federate with them.

    Each host's DataFrame (indexed by sample ID) is written to a temporary directory, a
    ``party-server`` process is started for it on a free port with a random token, and
    the federation waits until every server is healthy. Use it as a context manager:
    leaving the block (or the interpreter exiting) stops the processes and removes the
    files. It is a :class:`Federation`, so estimators take it as is; pickling or
    deep-copying it gives a plain :class:`Federation` handle to the same servers.

    Parameters
    ----------
    hosts : dict of {str: pandas.DataFrame}
        Each host's columns, indexed by sample ID.
    n_jobs : int, default=1
        Worker processes each party server uses for its encrypted computations.
    min_key_length : int, default=1024
        Smallest guest key the simulated hosts accept (real servers default to 2048).
    publish_feature_names : bool, default=True
        Whether the simulated hosts tell the guest their column names.
    session_ttl : float, default=3600
        Seconds an idle session lives on the hosts.
    timeout, retries
        As for :class:`Federation`.
    startup_timeout : float, default=60
        Seconds to wait for the servers to become healthy.
    max_models : int, default=100
        Models each host keeps per peer (oldest removed first).
    workdir : path, default=None
        Where to put each host's data, config, state (model store, audit log) and
        server log. ``None`` uses a temporary directory removed on close; a directory
        you name is kept, so its audit logs can be inspected afterwards.

    Examples
    --------
    >>> import pandas as pd
    >>> host_df = pd.DataFrame({"x": [0.1, 0.2, 0.3]}, index=["a", "b", "c"])
    >>> with LocalFederation(hosts={"insurer": host_df}) as fed:
    ...     print(fed.host_names, fed.is_alive("insurer"))
    ['insurer'] True
    """

    def __init__(
        self,
        hosts,
        *,
        n_jobs=1,
        min_key_length=1024,
        publish_feature_names=True,
        session_ttl=3600.0,
        timeout=(5.0, 300.0),
        retries=4,
        startup_timeout=60.0,
        max_models=100,
        workdir=None,
    ):
        if not isinstance(hosts, dict) or not hosts:
            raise ValueError("hosts must be a non-empty dict {name: DataFrame}")
        _check_settings(n_jobs, min_key_length, session_ttl, max_models, startup_timeout)
        for name, df in hosts.items():  # before anything touches the disk
            check_host_name(name)
            _check_host_frame(name, df)
            too_long = names_too_long(df.columns) if publish_feature_names else None
            if too_long:
                raise ValueError(
                    f"host {name!r}: {too_long}; pass publish_feature_names=False (the "
                    "guest then sees column positions)"
                )
        if workdir is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="fedsk-local-"))
            keep = None
        else:
            self._tmp = Path(workdir).resolve()
            self._tmp.mkdir(parents=True, exist_ok=True)
            keep = self._tmp  # a directory the caller chose is kept after close()
        self._procs = {}
        self._finalizer = weakref.finalize(
            self, _stop, self._procs, None if keep is not None else self._tmp
        )
        self._ports, self._configs = {}, {}
        specs = {}
        try:
            for name, df in hosts.items():
                token = secrets.token_urlsafe(24)
                home = self._tmp / name
                home.mkdir(exist_ok=workdir is not None)
                id_col = ID_COLUMN
                data = _host_data(df)
                path = home / "data.parquet"
                try:
                    data.to_parquet(path, index=False)
                except ImportError:  # no pyarrow: CSV with exact float round-trip
                    path = home / "data.csv"
                    data.to_csv(path, index=False, float_format="%.17g")
                port = _free_port()
                cfg = home / "host.toml"
                cfg.write_text(
                    "\n".join(
                        [
                            f"party = {_toml_str(name)}",
                            f'bind = "127.0.0.1:{port}"',
                            f"state_dir = {_toml_str(home / 'state')}",
                            f"n_jobs = {int(n_jobs)}",
                            f"min_key_length = {int(min_key_length)}",
                            f"session_ttl = {float(session_ttl)}",
                            "[models]",
                            f"max_models = {int(max_models)}",
                            "[datasets.data]",
                            f"path = {_toml_str(path)}",
                            f"id_column = {_toml_str(id_col)}",
                            f"publish_feature_names = {str(bool(publish_feature_names)).lower()}",
                            "[peers.guest]",
                            f"token = {_toml_str(token)}",
                            "",
                        ]
                    )
                )
                self._ports[name], self._configs[name] = port, cfg
                specs[name] = {"url": f"http://127.0.0.1:{port}", "dataset": "data", "token": token}
                self._start(name)
            super().__init__(specs, timeout=timeout, retries=retries)
            self._wait_healthy(startup_timeout)
        except BaseException:
            self.close()
            raise

    # processes ------------------------------------------------------------------------
    def _start(self, name):
        log = open(self._tmp / name / "server.log", "ab")  # noqa: SIM115 - owned by the child
        env = dict(os.environ, FEDSK_EXIT_WITH_PARENT=str(os.getpid()))
        self._procs[name] = subprocess.Popen(
            [sys.executable, "-m", "party_server", "--config", str(self._configs[name])],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log.close()

    def _wait_healthy(self, timeout, names=None):
        deadline = time.monotonic() + timeout
        for name in names or list(self._procs):
            url = f"http://127.0.0.1:{self._ports[name]}"
            while not ping(url, timeout=1.0):
                proc = self._procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"party server {name!r} exited at start:\n" + self.server_log(name)[-2000:]
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"party server {name!r} did not become healthy in "
                        f"{timeout:g} s:\n" + self.server_log(name)[-2000:]
                    )
                time.sleep(0.05)

    def is_alive(self, name):
        proc = self._procs.get(name)
        return proc is not None and proc.poll() is None

    def kill(self, name):
        """Kill host ``name``'s server at once (SIGKILL), as a crash would."""
        proc = self._procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def restart(self, name, timeout=60.0):
        """Start host ``name`` again on the same port and state directory."""
        if self.is_alive(name):
            self._procs[name].terminate()
            self._procs[name].wait()
        self._start(name)
        self._wait_healthy(timeout, [name])

    def pid(self, name):
        return self._procs[name].pid

    def state_dir(self, name):
        return self._tmp / name / "state"

    def audit_log_path(self, name):
        return self.state_dir(name) / "audit.log"

    def config_path(self, name):
        return self._configs[name]

    def server_log(self, name):
        path = self._tmp / name / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self):
        """Stop every server and remove the temporary files."""
        self._finalizer()

    def connect(self):
        if not self._finalizer.alive:
            name = next(iter(self.hosts))
            raise PartyUnavailableError(
                name,
                self.hosts[name]["url"],
                "this LocalFederation is closed (its party servers stopped when its "
                "with-block ended, or close() was called)",
                advice="Fit and predict inside the with-block, or start a new LocalFederation.",
            )
        return super().connect()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # a handle, not the processes, travels -------------------------------------------
    def __reduce__(self):
        return (_plain_federation, (self.hosts, self.timeout, self.retries))

    def __deepcopy__(self, memo):
        return _plain_federation(self.hosts, self.timeout, self.retries)


ID_COLUMN = "__sample_id__"


def _check_settings(n_jobs, min_key_length, session_ttl, max_models, startup_timeout):
    """The servers' settings, named as this class's arguments (before any server starts)."""
    for arg, value, ok, need in (
        ("n_jobs", n_jobs, lambda v: v == -1 or v >= 1, "a positive number of workers or -1"),
        ("min_key_length", min_key_length, lambda v: v >= 1024, "at least 1024"),
        ("max_models", max_models, lambda v: v >= 1, "at least 1"),
        ("session_ttl", session_ttl, lambda v: v >= 1, "at least 1 (seconds)"),
        ("startup_timeout", startup_timeout, lambda v: v > 0, "positive (seconds)"),
    ):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        integral = arg in ("n_jobs", "min_key_length", "max_models")
        if not number or (integral and not isinstance(value, int)) or not ok(value):
            raise ValueError(f"LocalFederation: {arg} must be {need}, got {value!r}")


def _check_host_frame(name, df):
    """What a party server would refuse in a host's DataFrame, said in this API's terms."""
    what = f"hosts[{name!r}]"
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame indexed by sample ID")
    if df.shape[0] == 0 or df.shape[1] == 0:
        raise ValueError(
            f"{what} has {df.shape[0]} rows and {df.shape[1]} columns; a host "
            "serves at least one column for at least one sample ID"
        )
    check_id_index(df.index, what)
    if df.index.has_duplicates:
        raise ValueError(f"{what} has duplicate sample IDs in its index")
    kinds = {type(v).__name__ for v in df.index[:100_000].tolist()}
    containers = sorted(kinds & {"tuple", "list", "dict", "set", "frozenset"})
    if containers:
        raise ValueError(
            f"{what} has sample IDs of type {containers[0]}, which a party server cannot "
            "read from its data file; make them text on every party, e.g. df.index = "
            "df.index.map(str) (an ID matches its text: the guest may keep its own as "
            "they are)"
        )
    if len(kinds) > 1 and not kinds <= {"int", "float"}:
        raise ValueError(
            f"{what} mixes sample IDs of types {sorted(kinds)} in its index; give "
            "every ID one type, e.g. df.index = df.index.astype(str)"
        )
    check_numeric_frame(df, what)
    names = pd.Index([str(c) for c in df.columns])
    if ID_COLUMN in names:
        raise ValueError(
            f"{what} has a column named {ID_COLUMN!r}, the name LocalFederation gives the "
            "sample-ID column in the host's data file; rename that column"
        )
    if names.has_duplicates:
        clash = [c for c in df.columns if str(c) in set(names[names.duplicated()])]
        raise ValueError(
            f"{what} has columns whose names are the same once written as text {clash[:5]} "
            "(a party server reads column names as text); rename them"
        )


def _host_data(df):
    """The frame a host's party server reads: text column names, IDs first, dense."""
    data = df.copy()
    sparse = [c for c, t in data.dtypes.items() if isinstance(t, pd.SparseDtype)]
    for c in sparse:  # (e.g. pd.get_dummies(..., sparse=True)); the server reads dense
        data[c] = data[c].sparse.to_dense()
    for c, dtype in df.dtypes.items():  # numbers held as objects (e.g. after a transpose)
        if pd.api.types.is_object_dtype(dtype):
            data[c] = pd.to_numeric(data[c]).astype("float64")
    data.columns = [str(c) for c in data.columns]
    ids = df.index.to_numpy()
    if ids.dtype == object and all(type(v) is int for v in ids.tolist()):
        # Python ints (perhaps beyond 64 bits, which a data file cannot hold) as their
        # text: an integer ID matches its decimal text in PSI
        ids = np.array([str(v) for v in ids.tolist()], dtype=object)
    data.insert(0, ID_COLUMN, ids)
    return data


def _plain_federation(hosts, timeout, retries):
    return Federation(hosts, timeout=timeout, retries=retries)
