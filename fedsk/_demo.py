"""``fedsk demo``: two organisations, one model (filled in as the estimators land)."""

__all__ = ["run_demo"]


def run_demo(*, key_length=2048, n_estimators=5, seed=0, quiet=False):
    print(
        "fedsk demo: the estimators are being built. This command will split the "
        "breast-cancer data between a bank (labels + 10 columns) and an insurer (20 "
        "columns), start a party server on 127.0.0.1, and compare guest-only, federated "
        "and centralised SecureBoost and logistic regression."
    )
    return 0
