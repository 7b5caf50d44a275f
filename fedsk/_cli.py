"""The ``fedsk`` command line: ``fedsk demo`` and friends."""

import argparse
import os
import sys

__all__ = ["main"]


def _int_at_least(low, what):
    """An argparse type: an integer >= ``low`` (argparse reports anything else)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{what} must be at least {low}, got {value}")
        return value

    return parse


def _key_length(text):
    value = _int_at_least(1024, "the key length")(text)
    if value % 2:  # the two primes have half the bits each
        raise argparse.ArgumentTypeError(f"the key length must be an even number, got {value}")
    return value


def _seed(text):
    value = _int_at_least(0, "the seed")(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"the seed must be below 2**32, got {value}")
    return value


def _workdir(text):
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} exists and is not a directory")
    try:  # (made here, so that a path that cannot be is one line, not a traceback)
        os.makedirs(text, exist_ok=True)
    except OSError as exc:
        raise argparse.ArgumentTypeError(
            f"cannot create {text} ({exc.strerror or exc}); give a directory you can write"
        ) from None
    return text


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fedsk",
        description="fedsk: vertical federated learning as scikit-learn estimators.",
    )
    sub = parser.add_subparsers(dest="command")
    demo = sub.add_parser(
        "demo",
        help="train SecureBoost and logistic regression across two simulated organisations",
        description="Split the breast-cancer data between a guest (labels + 10 columns) and a "
        "host (20 columns), start a real party server on 127.0.0.1 and compare "
        "guest-only, federated and centralised models.",
    )
    demo.add_argument(
        "--key-length",
        type=_key_length,
        default=2048,
        help="Paillier key length in bits, even, at least 1024 (default 2048; 1024 is faster)",
    )
    demo.add_argument(
        "--n-estimators",
        type=_int_at_least(1, "the number of trees"),
        default=5,
        help="SecureBoost trees, at least 1 (default 5)",
    )
    demo.add_argument(
        "--seed", type=_seed, default=0, help="random seed of the data split (0 to 2**32-1)"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument(
        "--workdir",
        type=_workdir,
        default=None,
        help="directory for the insurer's data, config and audit log "
        "(default: a new temporary directory, kept after the demo)",
    )
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(
            key_length=args.key_length,
            n_estimators=args.n_estimators,
            seed=args.seed,
            quiet=args.quiet,
            workdir=args.workdir,
        )
    parser.print_help()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
