"""The parallel crypto paths run on a dask cluster through joblib's backend switch."""

import joblib
import numpy as np
import pytest

from fedsk.crypto import decrypt_integers, encrypt_integers

distributed = pytest.importorskip("distributed")


def test_encrypt_and_bucket_sums_on_a_dask_cluster(keypair):
    pub, priv = keypair
    rng = np.random.default_rng(0)
    ints = rng.integers(0, 1000, size=600)
    bins = rng.integers(0, 6, size=(600, 40))
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
        distributed.get_task_stream(client) as stream,
        joblib.parallel_config(backend="dask"),
    ):
        enc = encrypt_integers(priv, ints.tolist(), n_jobs=2)
        hist = enc.histogram(bins, 6, n_jobs=2)
    assert len(stream.data) >= 4, "the work did not go through the dask cluster"
    assert decrypt_integers(priv, enc) == ints.tolist()
    got = np.array(decrypt_integers(priv, hist)).reshape(40, 6)
    for j in range(40):
        np.testing.assert_array_equal(got[j], np.bincount(bins[:, j], weights=ints, minlength=6))
