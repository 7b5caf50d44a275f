"""A bounded soak: 200 sequential fits + predicts against one party-server process.

Runs ``benchmarks/soak.py`` (the same code prints the figures of longer runs) and
checks its figures: host memory flat, no file descriptor, thread or session leaked,
model retention keeping the state directory bounded, audit chain intact. About a
minute on two busy cores.
"""

import importlib.util
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N_FITS = 200
MAX_MODELS = 5


def _soak_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("fedsk_benchmark_soak", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_soak_200_fits_and_predicts(capsys):
    with capsys.disabled():  # the figures belong in the CI log
        print()
        fig = _soak_module().soak(N_FITS, every=50, max_models=MAX_MODELS)
    assert fig["host_alive"]
    # memory: flat after the 20 warm-up fits (which fill the bounded cache of 8
    # fixed-base tables); the bounded replay cache of session openings (1,024 answers)
    # adds about 3 MB, then nothing (1,000 fits: 255.7 MB from fit 550 to 1,000)
    assert fig["rss_end_mb"] - fig["rss_start_mb"] < 16, fig["series"]
    # no file descriptor, thread or worker process leaked
    assert fig["fds_end"] <= fig["fds_start"] + 2, fig["series"]
    assert fig["threads_end"] <= fig["threads_start"] + 2
    assert fig["processes_end"] == 1
    # every session opened was closed (fit and predict each open one per host)
    assert fig["sessions_created"] >= 2 * N_FITS
    assert fig["sessions_left_open"] == 0
    # retention: at most max_models models on disk, nothing else but the audit log
    assert fig["models_on_disk"] == MAX_MODELS
    # models/, audit.log, its head and reserve, the lock
    assert len(fig["files_in_state_dir"]) == MAX_MODELS + 5
    assert not any(".tmp-" in f for f in fig["files_in_state_dir"])
    assert fig["audit_ok"], fig["audit_problem"]
