"""The quickstart notebook runs from a clean kernel without a failing cell."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("name", ["quickstart.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("FEDSK_KEY_LENGTH", "1024")  # fast keys in CI; 2048 by default
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 2, "the ROC and importance plots are missing"
    # both comparisons are like for like: federated SecureBoost equals the centralised one
    # (lossless); logistic regression's fits stop within tol of the same optimum
    text = "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    )
    gaps = re.findall(r"max \|federated - centralised\| probability: (\S+)", text)
    assert len(gaps) == 2 and float(gaps[0]) < 1e-6 and float(gaps[1]) < 1e-2, gaps
    assert os.environ["FEDSK_KEY_LENGTH"] == "1024"
