"""``fedsk demo``: a bank and an insurer train one model without sharing a raw value.

The breast-cancer data is split as FATE's own examples split it: the guest (the bank)
holds the label and 10 columns, the host (the insurer) the other 20. A real party
server is started on 127.0.0.1 for the insurer, and each estimator is trained three
ways: on the guest's columns alone, federated, and centralised on the joined columns
(the reference a federated fit should match).
"""

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["run_demo"]


def _split(seed):
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    X.index = [f"customer-{i:04d}" for i in range(len(X))]
    y.index = X.index
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, stratify=y, random_state=seed)
    scaler = StandardScaler().set_output(transform="pandas").fit(X_tr)
    return scaler.transform(X_tr), scaler.transform(X_te), y_tr, y_te, list(X.columns[:10])


def _timed(fit):
    t = time.perf_counter()
    model = fit()
    return model, time.perf_counter() - t


def _wire(audit_log):
    """Requests, ciphertexts and bytes each way, from the host's audit log."""
    out = {"requests": 0, "ct_in": 0, "ct_out": 0, "bytes_in": 0, "bytes_out": 0}
    for line in Path(audit_log).read_text().splitlines():
        rec = json.loads(line)
        out["requests"] += 1
        for k in ("ct_in", "ct_out", "bytes_in", "bytes_out"):
            out[k] += int(rec.get(k) or 0)
    return out


def run_demo(*, key_length=2048, n_estimators=5, seed=0, quiet=False, workdir=None, n_jobs=2):
    """Run the demo and print its tables; returns 0."""
    from sklearn.metrics import roc_auc_score

    from . import FederatedLogisticRegression, LocalFederation, SecureBoostClassifier

    say = print
    started = time.perf_counter()
    X_tr, X_te, y_tr, y_te, guest_cols = _split(seed)
    host_cols = [c for c in X_tr.columns if c not in guest_cols]
    host_df = pd.concat([X_tr[host_cols], X_te[host_cols]])
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fedsk-demo-"))
    verbose = 0 if quiet else 1
    say("fedsk demo: a bank (guest: labels + 10 columns) and an insurer (host: 20 columns)")
    say(
        f"breast-cancer data, {len(y_tr)} training / {len(y_te)} test rows, "
        f"{key_length}-bit Paillier keys, {n_jobs} cores"
    )
    say("starting the insurer's party server on 127.0.0.1 ...")
    with LocalFederation(
        hosts={"insurer": host_df},
        n_jobs=n_jobs,
        workdir=workdir,
        min_key_length=min(key_length, 2048),
    ) as fed:
        audit_log = fed.audit_log_path("insurer")
        config = fed.config_path("insurer")
        rows = []
        models = {
            "SecureBoost": lambda fed_: SecureBoostClassifier(
                federation=fed_,
                n_estimators=n_estimators,
                max_depth=3,
                learning_rate=0.3,
                key_length=key_length,
                n_jobs=n_jobs,
                random_state=seed,
                verbose=verbose,
            ),
            "Logistic regression": lambda fed_: FederatedLogisticRegression(
                federation=fed_,
                key_length=key_length,
                n_jobs=n_jobs,
                random_state=seed,
                verbose=verbose,
            ),
        }
        lossless = None
        for name, make in models.items():
            # the plaintext baselines take milliseconds: no progress bar for them
            guest, t_guest = _timed(
                lambda make=make: make(None).set_params(verbose=0).fit(X_tr[guest_cols], y_tr)
            )
            central, t_central = _timed(
                lambda make=make: make(None).set_params(verbose=0).fit(X_tr, y_tr)
            )
            if not quiet:
                say(f"training federated {name} ...")
            federated, t_fed = _timed(lambda make=make: make(fed).fit(X_tr[guest_cols], y_tr))
            p_guest = guest.predict_proba(X_te[guest_cols])[:, 1]
            p_fed = federated.predict_proba(X_te[guest_cols])[:, 1]
            p_central = central.predict_proba(X_te)[:, 1]
            rows += [
                (name, "guest columns only (10)", roc_auc_score(y_te, p_guest), t_guest),
                ("", "federated (10 + 20, encrypted)", roc_auc_score(y_te, p_fed), t_fed),
                ("", "centralised reference (30)", roc_auc_score(y_te, p_central), t_central),
            ]
            if name == "SecureBoost":
                lossless = float(np.max(np.abs(p_fed - p_central)))
        wire = _wire(audit_log)

    say("")
    say(f"{'model':22} {'trained on':32} {'test AUC':>9} {'fit time':>10}")
    say("-" * 76)
    for model, cols, auc, t in rows:
        say(f"{model:22} {cols:32} {auc:9.4f} {t:9.2f}s")
    say("")
    say(
        f"Federated SecureBoost vs the centralised reference: max |difference in predicted "
        f"probability| = {lossless:.1e} (lossless)."
    )
    say("")
    say("What crossed the wire, from the insurer's audit log:")
    say(
        f"  {wire['requests']} requests; ciphertexts bank -> insurer {wire['ct_in']:,}, "
        f"insurer -> bank {wire['ct_out']:,}; bytes bank -> insurer "
        f"{wire['bytes_in'] / 1e6:.1f} MB, insurer -> bank {wire['bytes_out'] / 1e6:.1f} MB"
    )
    say(f"  audit log: {audit_log}")
    say(f"  check it:  party-server audit verify --config {config}")
    say(f"             party-server audit show --config {config}")
    say(f"demo finished in {time.perf_counter() - started:.1f} s")
    return 0
