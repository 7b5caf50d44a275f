"""Loading a party's datasets (CSV or Parquet) into the arrays the protocols use."""

import numpy as np
import pandas as pd

from fedsk.federation import HostDataset

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
            # IDs are text: "00017" stays "00017" (not 17), and "007" and "7" stay apart
            df = pd.read_csv(cfg.path, dtype={cfg.id_column: str})
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
        raise ConfigError(f"config key '{key}.path': cannot read {cfg.path}: {exc}") from None
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


def load_datasets(config):
    return {name: load_dataset(d) for name, d in config.datasets.items()}
