"""``party-server``: serve the app, or check and summarise the audit log.

party-server --config host.toml              serve (waitress, plain HTTP on loopback)
party-server audit verify --config host.toml exit 0 if the chain is intact (1 broken,
                                             2 config/usage, 3 cannot read the log)
party-server audit show --config host.toml   per-session summary
party-server models list --config host.toml  the models the peers trained here
party-server models delete ID --config host.toml
party-server reload --config host.toml       the running server rereads its [peers]
"""

import argparse
import difflib
import errno
import logging
import os
import signal
import socket
import sys
import time

from ._config import ConfigError, load_config, load_state_dir
from ._storage import StateDirUnusable, unusable

__all__ = ["main"]


def _serve(args):
    from waitress import create_server

    from ._app import create_app, hold_sighup, serve_sighup

    hold_sighup()  # (a reload while the datasets load must not end the server)
    config = load_config(args.config)
    app = create_app(config)
    _json_errors_from_waitress(config.max_body_bytes)
    try:  # bind before saying we serve: a busy port is one line, not a traceback
        server = create_server(
            app,
            host=config.host,
            port=config.port,
            threads=config.threads,
            max_request_body_size=config.max_body_bytes + 1024,
            recv_bytes=1 << 16,  # (not 8 KiB at a time: request bodies are of ciphertexts)
            ident="fedsk-party-server",
        )
    except OSError as exc:
        _stop_workers()
        print(f"party-server: {_cannot_listen(config, exc)}", file=sys.stderr)
        return 1
    print(
        f"party-server: {config.party} serving {len(config.datasets)} dataset(s) on "
        f"http://{_url_host(config.host)}:{config.port} (state: {config.state_dir})",
        flush=True,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    serve_sighup(app.extensions["fedsk"])  # party-server reload: tokens change, sessions go on
    try:
        server.run()  # (returns on SIGTERM or Ctrl-C)
    finally:
        _stop_workers()
    print(f"party-server: {config.party} stopped", flush=True)
    return 0


def _cannot_listen(config, exc):
    """One line saying why the server cannot listen on its ``bind`` address."""
    where = f"port {config.port} on {config.host}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {config.host!r} (config key 'bind'): {exc.strerror or exc}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where} is already in use; choose another port in the config key 'bind' "
            "or stop the other process"
        )
    if exc.errno == errno.EACCES:
        return (
            f"not allowed to listen on {where} (ports below 1024 need privileges); "
            "choose another port in the config key 'bind'"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{config.host} is not an address of this machine; fix the config key 'bind'"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def _json_errors_from_waitress(max_body_bytes):
    """Answer what waitress refuses before the app sees it in the app's JSON error shape.

    Waitress itself refuses malformed HTTP and bodies larger than its limit (the app's
    ``max_body_bytes`` plus 1 KiB; the app answers bodies just over its own limit). Its
    default answer is plain text; a peer gets ``{"error": {"code", "message",
    "request_id"}}`` like every other refusal. These requests never reach the app, so
    they are not in the audit log. A transfer coding waitress does not implement (HTTP's
    501) is the peer's mistake here, as the fedsk client never sends one: it is a 400.
    """
    import json

    from waitress import utilities

    from ._app import too_large_message

    def to_response(self, ident=None):
        status, reason = (400, "Bad Request") if self.code == 501 else (self.code, self.reason)
        code = self.reason.lower().replace(" ", "_")
        message = f"{self.reason}: {self.body}"
        if self.code == 413:  # (waitress names its own limit, 1 KiB above the app's)
            message = too_large_message(max_body_bytes)
        body = json.dumps({"error": {"code": code, "message": message, "request_id": None}})
        headers = [("Content-Type", "application/json")]
        return f"{status} {reason}", headers, (body + "\n").encode()

    utilities.Error.to_response = to_response


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop_workers():
    """Stop joblib's worker processes so that none outlives the server."""
    try:
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor
        if executor is not None:
            executor.shutdown(wait=False, kill_workers=True)
    except Exception:  # pragma: no cover - best effort at exit
        pass


# exit codes of the commands that read state_dir (audit verify documents them)
BROKEN, USAGE, CANNOT_READ = 1, 2, 3


def _state_dir(args):
    """The config's state_dir, which must exist (a typo is not an empty store)."""
    state_dir = load_state_dir(args.config)
    if not state_dir.is_dir():
        raise ConfigError(
            f"config key 'state_dir': {state_dir} does not exist or is not a directory "
            f"(the party server creates it when it starts); check the path in {args.config}"
        )
    return state_dir


def _audit_verify(args):
    from ._audit import head_path, verify

    path = _state_dir(args) / "audit.log"
    try:
        ok, n, problem = verify(path)
        if ok:
            head = head_path(path)
            head_line = head.read_text().strip()
    except OSError as exc:
        raise unusable(exc, "read", path) from None
    if ok:
        print(f"audit log {path}: {n} records, chain intact up to its head ({head.name})")
        print(f"head: {head_line}")  # copy it elsewhere to detect rewrites
        return 0
    print(f"audit log {path}: BROKEN after {n} good records: {problem}", file=sys.stderr)
    return BROKEN


def _audit_show(args):
    from ._audit import printable, summarize

    path = _state_dir(args) / "audit.log"
    if not path.exists():
        print(f"party-server: the audit log {path} does not exist", file=sys.stderr)
        return 1
    try:
        sessions = summarize(path)
    except OSError as exc:
        raise unusable(exc, "read", path) from None
    print(
        f"audit log {path}: {sum(s['requests'] for s in sessions.values())} requests, "
        f"{len(sessions)} sessions"
    )
    header = (
        f"{'session':34} {'peer':12} {'first (UTC)':24} {'reqs':>5} {'errs':>5} "
        f"{'ct in':>8} {'ct out':>8} {'MB in':>8} {'MB out':>8}  endpoints"
    )
    print(header)
    for sid, s in sessions.items():
        # (records written before fedsk escaped them can hold what a client sent)
        sid = printable(sid)
        eps = ", ".join(f"{printable(k)} x{v}" for k, v in sorted(s["endpoints"].items()))
        print(
            f"{sid:34} {printable(s['peer'] or '-'):12} {s['first'] or '-':24} {s['requests']:5d} "
            f"{s['errors']:5d} {s['ct_in']:8d} {s['ct_out']:8d} {s['bytes_in'] / 1e6:8.2f} "
            f"{s['bytes_out'] / 1e6:8.2f}  {eps}"
        )
    return 0


def _models_list(args):
    from ._audit import printable
    from ._models import describe_models

    root = _state_dir(args) / "models"
    if not _store_exists(root):
        return 1
    models = describe_models(root)
    print(f"model store {root}: {len(models)} model file(s)")
    print(
        f"{'model':24} {'peer':12} {'kind':12} {'dataset':14} {'created (UTC)':20} "
        f"{'updated (UTC)':20} {'KB':>8}  state"
    )
    for m in models:
        print(
            f"{m['model_id']:24} {printable(m.get('owner') or '-'):12} "
            f"{printable(m.get('kind') or '-'):12} {printable(m.get('dataset') or '-'):14} "
            f"{_utc(m.get('created')):20} {_utc(m.get('updated')):20} "
            f"{m['bytes'] / 1024:8.1f}  {m['state']}"
        )
    if any(m["state"] == "unfinished" for m in models):
        print(
            "unfinished: saved by a fit whose session has not closed, a fit running now or "
            "one whose guest stopped mid-fit (delete it once no fit uses it)"
        )
    return 0


def _store_exists(root):
    """Whether the model store ``root`` exists (if not, said on stderr); a store that
    cannot be listed (permissions, a file in its place) raises StateDirUnusable."""
    try:
        with os.scandir(root):  # (a store it cannot list would look empty)
            pass
    except FileNotFoundError:
        print(
            f"party-server: there is no model store {root} (the party server creates it "
            "when it starts)",
            file=sys.stderr,
        )
        return False
    except OSError as exc:
        raise unusable(exc, "list the model store", root) from None
    return True


def _models_delete(args):
    from ._models import delete_model_file

    root = _state_dir(args) / "models"
    if not _store_exists(root):
        return 1
    try:
        delete_model_file(root, args.model_id)
    except LookupError as exc:
        print(f"party-server: {exc}", file=sys.stderr)
        return 1
    print(f"deleted model {args.model_id} from {root}")
    return 0


def _reload(args):
    """Check the config, then ask the server running on its state_dir to reread its peers."""
    from ._storage import check_state_dir, running_server

    # a mistake is named here, not only in the server's log; the server's environment
    # (token_env) is not this shell's, so variables are left for the server to check
    config = load_config(args.config, environ=None)
    check_state_dir(config.state_dir)
    pid, serving = running_server(config.state_dir)
    if pid is not None and serving != str(config.source):  # (both resolved)
        # the server rereads the file it started with, not this one
        started = f"was started from {serving}" if serving else "was not started from a file"
        print(
            f"party-server: the server on {config.state_dir} (process {pid}) {started}; it "
            f"rereads that file, not {config.source}: edit it and run reload --config with "
            "it (or restart the server with this file)",
            file=sys.stderr,
        )
        return USAGE
    if pid is None:
        print(
            f"party-server: no party server is running on {config.state_dir}; the config "
            "is valid and applies when the server starts",
            file=sys.stderr,
        )
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"party-server: the server process {pid} is gone", file=sys.stderr)
        return 1
    except PermissionError:
        print(
            f"party-server: not allowed to signal the server process {pid}; run this as "
            "the user the server runs as",
            file=sys.stderr,
        )
        return 1
    print(
        f"asked party server process {pid} to reread the [peers] of {config.source}; "
        "its log says what it loaded"
    )
    return 0


def _utc(timestamp):
    if not isinstance(timestamp, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp))


def _url_host(host):
    return f"[{host}]" if ":" in host else host  # an IPv6 address goes in brackets


def _check_options(parser, argv):
    """A mistyped option is named as such (argparse would call the next word a bad command)."""
    known = {"-h", "--help", "-v", "--verbose", "--version", "--config"}
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name.startswith("--") and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            parser.error(
                f"unrecognized option {name}" + (f"; did you mean {close[0]}?" if close else "")
            )


def _version():
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedsk")
    except PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "unknown"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="party-server",
        description="Serve a fedsk party (the host side of vertical federated learning), or "
        "check its audit log.",
    )
    parser.add_argument("--config", help="TOML config file of this party")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    parser.add_argument("--version", action="version", version=f"%(prog)s (fedsk {_version()})")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the party (the default command)")
    serve.add_argument("--config", dest="config_sub", metavar="CONFIG", help="TOML config file")
    serve.add_argument(
        "-v", "--verbose", dest="verbose_sub", action="store_true", help="log every request"
    )
    audit = sub.add_parser("audit", help="check or summarise the hash-chained audit log")
    audit.add_argument("--config", dest="config_group", metavar="CONFIG", help=argparse.SUPPRESS)
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    for name, text, more in (
        (
            "verify",
            "exit 0 if the chain is intact, 1 naming the first bad record otherwise",
            "Exit codes: 0 the chain is intact up to its head; 1 it is broken (a record "
            "edited, inserted or removed, a blank line, or the log or its head missing); "
            "2 a problem with the config or the command line; 3 the log or its head "
            "cannot be read (permissions, a directory in its place).",
        ),
        ("show", "print a per-session summary", None),
    ):
        p = audit_sub.add_parser(name, help=text, description=more or text)
        p.add_argument("--config", dest="config_sub", metavar="CONFIG", help="TOML config file")
    models = sub.add_parser("models", help="list or delete the models the peers trained here")
    models.add_argument("--config", dest="config_group", metavar="CONFIG", help=argparse.SUPPRESS)
    models_sub = models.add_subparsers(dest="models_command", required=True)
    p = models_sub.add_parser("list", help="every model: ID, peer, kind, dataset, times, size")
    p.add_argument("--config", dest="config_sub", metavar="CONFIG", help="TOML config file")
    p = models_sub.add_parser(
        "delete", help="delete one model (also while the server runs; not in the audit log)"
    )
    p.add_argument("model_id", help="the model's ID, as models list shows it")
    p.add_argument("--config", dest="config_sub", metavar="CONFIG", help="TOML config file")
    p = sub.add_parser(
        "reload",
        help="the running server rereads the config's [peers] (tokens, their expiry, "
        "datasets) without a restart",
    )
    p.add_argument("--config", dest="config_sub", metavar="CONFIG", help="TOML config file")
    return parser


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    _check_options(parser, argv)
    args = parser.parse_args(argv)
    args.config = (
        getattr(args, "config_sub", None) or getattr(args, "config_group", None) or args.config
    )
    args.verbose = args.verbose or getattr(args, "verbose_sub", False)
    if not args.config:
        parser.error("--config host.toml is required")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    _exit_with_parent()
    try:
        if args.command == "reload":
            return _reload(args)
        try:
            if args.command in ("models", "audit"):
                if args.command == "models":
                    list_ = args.models_command == "list"
                    code = _models_list(args) if list_ else _models_delete(args)
                else:
                    verifying = args.audit_command == "verify"
                    code = _audit_verify(args) if verifying else _audit_show(args)
                sys.stdout.flush()  # (a reader gone meanwhile is found here, not at exit)
                return code
        except StateDirUnusable as exc:
            print(f"party-server: {exc}", file=sys.stderr)
            return CANNOT_READ
        except BrokenPipeError:  # e.g. `models list | head -1`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        return _serve(args)
    except ConfigError as exc:
        print(f"party-server: {exc}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:  # pragma: no cover - interactive stop
        return 0


def _exit_with_parent():
    """When started by LocalFederation, exit as soon as the parent process is gone."""
    import os
    import threading
    import time

    parent = os.environ.get("FEDSK_EXIT_WITH_PARENT")
    if not parent or not parent.isdigit():
        return

    def watch():
        while True:
            if os.getppid() != int(parent):
                _stop_workers()
                os._exit(0)
            time.sleep(0.5)

    threading.Thread(target=watch, name="fedsk-parent-watch", daemon=True).start()
