"""The command line a new user meets first: fedsk demo, its help, and the README commands."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_help_explains_the_demo_options():
    top = run("fedsk._cli", "--help")
    assert top.returncode == 0 and "demo" in top.stdout
    demo = run("fedsk._cli", "demo", "--help")
    for option in ("--key-length", "--n-estimators", "--seed", "--quiet"):
        assert option in demo.stdout


@pytest.mark.integration
def test_demo_prints_the_comparison_table(tmp_path):
    res = run(
        "fedsk._cli",
        "demo",
        "--key-length",
        "1024",
        "--n-estimators",
        "3",
        "--quiet",
        "--workdir",
        str(tmp_path),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    rows = re.findall(
        r"^(.{22}) (guest columns only|federated|centralised reference)[^\n]*?"
        r"(\d\.\d{4})\s+(\d+\.\d+)s$",
        out,
        flags=re.M,
    )
    assert len(rows) == 6, out
    aucs = [float(r[2]) for r in rows]
    sb_guest, sb_fed, sb_central, lr_guest, lr_fed, _ = aucs
    assert sb_fed > sb_guest and lr_fed > lr_guest
    assert sb_fed == sb_central  # lossless
    assert "lossless" in out and "requests" in out
    log = re.search(r"audit log: (\S+)", out).group(1)
    config = re.search(r"party-server audit verify --config (\S+)", out).group(1)
    assert Path(log).exists()
    check = run("party_server", "audit", "verify", "--config", config)
    assert check.returncode == 0, check.stderr


def test_readme_starts_with_the_two_commands_ci_uses():
    readme = (ROOT / "README.md").read_text().splitlines()
    block = readme[readme.index("```bash") + 1 : readme.index("```bash") + 3]
    install, test = (line.split("#")[0].strip() for line in block)
    assert "pip install ." in install and "fedsk demo" in install
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci and "tox" in test
    assert readme.index("```bash") < 5
