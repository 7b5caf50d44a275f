"""The progress bar the estimators show with ``verbose`` (tqdm, on stderr)."""

__all__ = ["progress_bar"]


def progress_bar(verbose, total, *, desc, unit, initial=0):
    """A tqdm bar over ``total`` steps, silent (but still usable) when ``verbose`` is 0."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, disable=not verbose, leave=False
    )
