import pytest

from fedsk.crypto import generate_keypair


@pytest.fixture(scope="session")
def keypair():
    """One 1024-bit Paillier key pair for the whole run (fast; 2048 is the user default)."""
    return generate_keypair(1024)


@pytest.fixture(autouse=True)
def _fresh_alignments():
    """Each test aligns its samples anew and makes its first key pair: a test whose fits
    are expected to run PSI (counting its requests, or breaking them) must not reuse an
    earlier test's alignment, nor take a key pair an earlier test's fit made ahead."""
    from fedsk.crypto._ahead import drop_keypair_ahead
    from fedsk.federation._psi import _cache

    _cache.clear()
    drop_keypair_ahead()


@pytest.fixture(scope="session")
def standard_keypair():
    """A key pair whose encryptions use phe's plain r**n obfuscator."""
    return generate_keypair(1024, obfuscation="standard")


import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

TOKEN = "guest-token-0123456789"


def write_host(tmp_path, df, *, name="insurer", publish=True, **extra):
    """Write ``df`` (indexed by sample ID) and return a party-server config dict."""
    home = tmp_path / name
    home.mkdir(parents=True, exist_ok=True)
    data = df.copy()
    data.insert(0, "customer_id", df.index.to_numpy())
    data.to_csv(home / "customers.csv", index=False, float_format="%.17g")
    cfg = {
        "party": name,
        "bind": "127.0.0.1:8443",
        "state_dir": str(home / "state"),
        "min_key_length": 1024,
        "datasets": {
            "customers": {
                "path": str(home / "customers.csv"),
                "id_column": "customer_id",
                "publish_feature_names": publish,
            }
        },
        "peers": {"bank": {"token": TOKEN}},
    }
    cfg.update(extra)
    return cfg


@pytest.fixture
def host_df():
    rng = np.random.default_rng(1)
    ids = [f"c{i:04d}" for i in range(60)]
    return pd.DataFrame(rng.normal(size=(60, 3)), index=ids, columns=["age", "claims", "tenure"])


@pytest.fixture
def host_app(tmp_path, host_df):
    from party_server import create_app

    return create_app(write_host(tmp_path, host_df))


@pytest.fixture
def inproc(host_app):
    from fedsk.federation import InProcessFederation

    return InProcessFederation({"insurer": (host_app, "customers", TOKEN)})
