"""The command line a new user meets first: fedsk demo, its help, and the README commands."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from party_server._cli import main as party_server_main

from ._servers import write_toml
from .conftest import write_host

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_help_explains_the_demo_options():
    top = run("fedsk._cli", "--help")
    assert top.returncode == 0 and "demo" in top.stdout
    assert run("fedsk", "--help").stdout == top.stdout  # python -m fedsk
    demo = run("fedsk._cli", "demo", "--help")
    for option in ("--key-length", "--n-estimators", "--seed", "--quiet"):
        assert option in demo.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--key-length", "100"], "argument --key-length: the key length must be at least 1024"),
        (["--key-length", "2k"], "argument --key-length: '2k' is not an integer"),
        (["--key-length", "1025"], "argument --key-length: the key length must be an even"),
        (["--n-estimators", "0"], "argument --n-estimators: the number of trees must be at least"),
        (["--seed", "-1"], "argument --seed: the seed must be at least 0"),
        (["--seed", str(2**32)], "argument --seed: the seed must be below 2**32"),
        (["--workdir", __file__], "argument --workdir: " + __file__ + " exists and is not a dir"),
        (
            ["--workdir", __file__ + "/under-a-file"],
            "argument --workdir: cannot create " + __file__ + "/under-a-file (Not a directory)",
        ),
    ],
)
def test_demo_refuses_bad_arguments_in_one_line(capsys, args, message):
    from fedsk._cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["demo", *args])  # before anything starts
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("fedsk demo: error: " + message), err


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


def test_party_server_on_a_busy_port_says_so_in_one_line(tmp_path, host_df):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        write_toml(tmp_path / "host.toml", write_host(tmp_path, host_df, bind=f"127.0.0.1:{port}"))
        res = run("party_server", "--config", str(tmp_path / "host.toml"), timeout=120)
    assert res.returncode == 1
    assert res.stdout == ""  # no "serving ..." banner: it never served
    assert res.stderr == (
        f"party-server: port {port} on 127.0.0.1 is already in use; choose another port "
        "in the config key 'bind' or stop the other process\n"
    )


def _unreadable(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path = tmp_path / "host.toml"
    path.write_text('party = "x"\n')
    path.chmod(0)
    return path


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda tmp: tmp, "is a directory"),
        (lambda tmp: tmp / "host.toml" / "x.toml", "Not a directory"),  # a file in the path
        (_unreadable, "Permission denied"),
        (lambda tmp: tmp / "host.toml", "is not valid TOML"),
    ],
    ids=["directory", "file in the path", "unreadable", "not UTF-8"],
)
def test_party_server_config_that_cannot_be_read_is_one_line(tmp_path, capsys, make, problem):
    (tmp_path / "host.toml").write_bytes(b'party = "\xff"\n')
    path = make(tmp_path)
    for argv in (["--config", str(path)], ["audit", "verify", "--config", str(path)]):
        assert party_server_main(argv) == 2
        captured = capsys.readouterr()
        err = captured.err
        assert err.startswith("party-server: ") and problem in err, err
        assert err.count("\n") == 1 and captured.out == ""


def test_docs_install_extras_that_exist():
    """Every ``fedsk[extra]`` the docs tell a user to install is defined, and the deploy
    guide, whose host reads Parquet and may run gunicorn, installs what that needs."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    docs = {p: p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]}
    named = {
        (p.name, extra)
        for p, text in docs.items()
        for group in re.findall(r"fedsk\[([a-z,]+)\]", text)
        for extra in group.split(",")
    }
    assert not {(f, e) for f, e in named if e not in extras}
    assert any(d.startswith("pyarrow") for d in extras["parquet"])
    assert any(d.startswith("gunicorn") for d in extras["gunicorn"])
    assert {("deploy.md", "parquet"), ("deploy.md", "gunicorn")} <= named


@pytest.mark.parametrize(
    "command",
    [["serve"], ["audit", "verify"], ["audit", "show"], ["models", "list"], ["models", "delete"]],
)
def test_party_server_help_names_the_config_option_plainly(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        party_server_main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--config CONFIG" in out and "CONFIG_SUB" not in out


@pytest.mark.slow
def test_readme_python_example_runs_as_written():
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["proba"].shape == (len(scope["X"]) - 500, 2)
    assert scope["clf"].n_estimators_ == 10 and scope["clf"].host_n_features_ == {"insurer": 20}


def test_party_server_flags_version_and_typos(capsys):
    with pytest.raises(SystemExit) as exit_:
        party_server_main(["--version"])
    assert exit_.value.code == 0 and re.match(
        r"party-server \(fedsk \S+\)", capsys.readouterr().out
    )
    with pytest.raises(SystemExit) as exit_:
        party_server_main(["--confg", "host.toml"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unrecognized option --confg; did you mean --config?" in err
    assert party_server_main(["serve", "-v", "--config", "/no/such/host.toml"]) == 2  # -v there
    assert "does not exist" in capsys.readouterr().err


def test_party_server_prints_an_ipv6_bind_as_a_url(tmp_path, host_df):
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here ({exc})")
    cfg = write_host(tmp_path, host_df, bind=f"[::1]:{port}")
    path = tmp_path / "host.toml"
    write_toml(path, cfg)
    proc = subprocess.Popen(
        [sys.executable, "-m", "party_server", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert f"http://[::1]:{port} " in line, line


def test_wsgi_without_a_config_names_the_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FEDSK_PARTY_CONFIG"}
    r = subprocess.run(
        [sys.executable, "-c", "import party_server.wsgi"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "set FEDSK_PARTY_CONFIG" in r.stderr
