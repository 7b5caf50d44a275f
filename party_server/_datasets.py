"""Loading a party's datasets (CSV or Parquet) into the arrays the protocols use."""

import csv
import gzip
import warnings

import numpy as np
import pandas as pd

from fedsk.federation import HostDataset
from fedsk.federation._hostapi import names_too_long

from ._config import ConfigError

__all__ = ["load_dataset", "load_datasets"]


def load_dataset(cfg):
    """Read one configured dataset; raise ConfigError naming the key on any problem."""
    key = f"datasets.{cfg.name}"
    if not cfg.path.exists():
        raise ConfigError(f"config key '{key}.path': file {cfg.path} does not exist")
    suffix = cfg.path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(cfg.path)
        elif suffix in (".csv", ".txt", ".gz"):
            df = _read_csv(cfg.path, cfg.id_column, key)
        else:
            raise ConfigError(
                f"config key '{key}.path': use a .csv or .parquet file, got {cfg.path.name}"
            )
    except ConfigError:
        raise
    except ImportError as exc:
        raise ConfigError(
            f"config key '{key}.path': cannot read Parquet ({exc}); "
            'pip install "fedsk[parquet]" (pyarrow)'
        ) from None
    except Exception as exc:
        problem = " ".join(str(exc).split())  # (pandas' messages can end in a newline)
        raise ConfigError(f"config key '{key}.path': cannot read {cfg.path}: {problem}") from None
    if len(df) == 0:
        raise ConfigError(
            f"config key '{key}.path': {cfg.path.name} has no rows (only a header); "
            "give a file with the samples"
        )
    if cfg.id_column not in df.columns:
        raise ConfigError(
            f"config key '{key}.id_column': column {cfg.id_column!r} is not in {cfg.path.name}"
        )
    ids = df[cfg.id_column]
    if ids.isna().any():
        raise ConfigError(f"config key '{key}.id_column': {int(ids.isna().sum())} rows have no ID")
    if ids.duplicated().any():
        raise ConfigError(
            f"config key '{key}.id_column': {int(ids.duplicated().sum())} "
            "duplicate IDs; sample IDs must be unique"
        )
    columns = (
        cfg.features if cfg.features is not None else [c for c in df.columns if c != cfg.id_column]
    )
    for c in columns:
        if c not in df.columns:
            raise ConfigError(f"config key '{key}.features': column {c!r} is not in the file")
        if not (pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])):
            raise ConfigError(
                f"config key '{key}': column {c!r} is not numeric; encode it or "
                "leave it out with 'features = [...]'"
            )
    if not columns:
        raise ConfigError(f"config key '{key}': the dataset has no feature columns")
    too_long = names_too_long(columns) if cfg.publish_feature_names else None
    if too_long:
        raise ConfigError(
            f"config key '{key}.publish_feature_names': {too_long}; set it to false "
            "(peers then see column positions), or publish fewer columns with "
            "features = [...]"
        )
    X = df[columns].to_numpy(dtype=np.float64)
    if np.isinf(X).any():
        raise ConfigError(f"config key '{key}': feature values must be finite (NaN = missing)")
    return HostDataset(
        name=cfg.name,
        ids=ids.to_numpy(),
        X=np.ascontiguousarray(X),
        feature_names=[str(c) for c in columns] if cfg.publish_feature_names else None,
        columns=[str(c) for c in columns],
    )


def _read_csv(path, id_column, key):
    """A CSV file with the columns its header names, whatever trailing commas its rows have.

    IDs are text: "00017" stays "00017" (not 17), and "007" and "7" stay apart. pandas
    would take the first column as the index when the rows have one field more than the
    header (``index_col=False`` stops that), and with ``index_col=False`` it would drop
    fields beyond the header without a word. So rows longer than the header are accepted
    only if what is beyond it is empty (trailing commas); otherwise the line is named.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            df = pd.read_csv(path, dtype={id_column: str}, index_col=False)
        except pd.errors.ParserError:
            df = None  # e.g. a later row longer than the first one
    if df is not None and not any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
        unnamed = _unnamed_at_end(df)  # (the header ends in commas too)
        if df[unnamed].isna().all().all():
            return df.drop(columns=unnamed)
    header, widest = _check_row_lengths(path, key)
    names = header + [f"__beyond_{i}" for i in range(widest - len(header))]
    df = pd.read_csv(
        path, dtype={id_column: str}, index_col=False, header=None, skiprows=1, names=names
    )
    return df.drop(columns=names[len(header) :])  # empty (checked above)


def _unnamed_at_end(df):
    """The last columns, if their names in the header are empty (pandas: "Unnamed: 4")."""
    columns = list(df.columns)
    while columns and str(columns[-1]).startswith("Unnamed: "):
        columns.pop()
    return list(df.columns[len(columns) :])


def _check_row_lengths(path, key):
    """``(header, most fields in a row)``; ConfigError naming the first line with a
    non-empty field beyond the header."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        while header and not header[-1].strip():  # a header ending in commas
            header.pop()
        header = [name or f"Unnamed: {i}" for i, name in enumerate(header)]
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise ConfigError(
                f"config key '{key}.path': the header of {path.name} names column "
                f"{repeated[0]!r} twice; give each column its own name"
            )
        widest = len(header)
        for row in reader:
            if len(row) > len(header):
                if any(field.strip() for field in row[len(header) :]):
                    raise ConfigError(
                        f"config key '{key}.path': line {reader.line_num} of {path.name} has "
                        f"{len(row)} fields but the header names {len(header)} columns; fix "
                        "that row or name the extra column in the header"
                    )
                widest = max(widest, len(row))
    return header, widest


def load_datasets(config):
    return {name: load_dataset(d) for name, d in config.datasets.items()}
