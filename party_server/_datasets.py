"""Loading a party's datasets (CSV or Parquet) into the arrays the protocols use."""

import csv
import gzip
import io
import itertools
import warnings

import numpy as np
import pandas as pd

from fedsk.federation import HostDataset
from fedsk.federation._hostapi import names_too_long

from ._config import ConfigError

__all__ = ["load_dataset", "load_datasets"]

_PARQUET = (".parquet", ".pq")


def load_dataset(cfg):
    """Read one configured dataset; raise ConfigError naming the key on any problem."""
    key = f"datasets.{cfg.name}"
    if not cfg.path.exists():
        raise ConfigError(f"config key '{key}.path': file {cfg.path} does not exist")
    suffix = cfg.path.suffix.lower()
    if cfg.path.is_dir() and suffix not in _PARQUET:  # (a Parquet dataset can be a directory)
        raise ConfigError(
            f"config key '{key}.path': {cfg.path} is a directory, not a file; give the path "
            "of the CSV or Parquet file"
        )
    _check_features(cfg.features, cfg.id_column, key)
    try:
        if suffix in _PARQUET:
            df = _read_parquet(cfg.path, key)
            if cfg.id_column not in df.columns and cfg.id_column in df.index.names:
                df = df.reset_index()  # (written with the IDs as the DataFrame's index)
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
        raise ConfigError(
            f"config key '{key}.id_column': {int(ids.isna().sum())} rows have no ID "
            f"({_where(ids.isna())}); give every row its sample ID"
        )
    repeated = ids.duplicated()
    if repeated.any():
        first = ids[repeated].iloc[0]
        raise ConfigError(
            f"config key '{key}.id_column': {int(repeated.sum())} duplicate IDs, "
            f"e.g. {first!r} ({_where(ids == first)}); sample IDs must be unique"
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
    infinite = np.isinf(X)
    if infinite.any():
        j = int(np.flatnonzero(infinite.any(axis=0))[0])
        raise ConfigError(
            f"config key '{key}': column {columns[j]!r} holds infinity ({_where(infinite[:, j])}); "
            "feature values must be finite (write a missing value as an empty field: NaN)"
        )
    return HostDataset(
        name=cfg.name,
        ids=ids.to_numpy(),
        X=np.ascontiguousarray(X),
        feature_names=[str(c) for c in columns] if cfg.publish_feature_names else None,
        columns=[str(c) for c in columns],
    )


def _where(mask, limit=3):
    """Where ``mask`` is true, for a message: "data rows 4, 9, ... (counted from 1 after
    the header)"."""
    positions = np.flatnonzero(np.asarray(mask)) + 1
    shown = ", ".join(str(p) for p in positions[:limit]) + (
        ", ..." if len(positions) > limit else ""
    )
    return f"data row{'s' if len(positions) > 1 else ''} {shown}, counted from 1 after the header"


def _check_features(features, id_column, key):
    """``features = [...]`` names each column once, and not the ID column."""
    if features is None:
        return
    repeated = _repeated(features)
    if repeated is not None:
        raise ConfigError(
            f"config key '{key}.features': names column {repeated!r} twice; name each column once"
        )
    if id_column in features:
        raise ConfigError(
            f"config key '{key}.features': names the ID column {id_column!r}; the sample "
            "IDs are not a feature, leave it out"
        )


def _repeated(names):
    """The first name that occurs twice in ``names``, or None."""
    seen = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _read_parquet(path, key):
    """A Parquet file (or a directory of them, as Spark writes); its column names unique."""
    try:
        df = pd.read_parquet(path)
    except ImportError:
        raise
    except Exception:
        # pyarrow refuses repeated names with a message listing the whole schema
        try:
            import pyarrow.parquet as pq

            names = pq.ParquetDataset(path).schema.names
        except Exception:
            names = []
        repeated = _repeated(names)
        if repeated is None:
            raise
    else:
        repeated = _repeated(df.columns)
    if repeated is not None:
        raise ConfigError(
            f"config key '{key}.path': {path.name} has two columns named {repeated!r}; "
            "give each column its own name"
        )
    return df


def _read_csv(path, id_column, key):
    """A CSV file with the columns its header names, whatever trailing commas its rows have.

    IDs are text: "00017" stays "00017" (not 17), and "007" and "7" stay apart. pandas
    would take the first column as the index when the rows have one field more than the
    header (``index_col=False`` stops that), and with ``index_col=False`` it would drop
    fields beyond the header without a word. So rows longer than the header are accepted
    only if what is beyond it is empty (trailing commas); otherwise the line is named.
    pandas also fills a row *shorter* than the header with NaN, and reads a file cut off
    in the middle of its last line: both are refused, a file that does not end in a
    newline (``to_csv`` ends every file in one) as possibly cut short. A header naming a
    column twice is refused too (pandas would rename the second one ``x.1``).

    The checks cost little on a well-formed file: only when the last column has missing
    values does it count the commas (outside quotes), and only when that does not settle
    it does it read the file row by row.
    """
    open_file = _opener(path)
    raw_header = _raw_header(open_file)
    if raw_header:  # (an empty file: pandas says so below)
        header = _names(raw_header)
        _check_header(header, path, id_column, key)
        _check_ends_in_newline(open_file, path, key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            df = _pandas_read(path, open_file, dtype={id_column: str}, index_col=False)
        except pd.errors.ParserError:
            df = None  # e.g. a later row longer than the first one
    if df is not None and not any(issubclass(w.category, pd.errors.ParserWarning) for w in caught):
        unnamed = _unnamed_at_end(df)  # (the header ends in commas too)
        if df[unnamed].isna().all().all():
            df = df.drop(columns=unnamed)
            if not _may_have_short_rows(df, open_file, len(raw_header)):
                return df
    header, widest = _check_row_lengths(open_file, path, key)
    names = header + [f"__beyond_{i}" for i in range(widest - len(header))]
    df = _pandas_read(
        path, open_file, dtype={id_column: str}, index_col=False, header=0, names=names
    )
    return df.drop(columns=names[len(header) :])  # empty (checked above)


def _opener(path):
    """A function opening the file for reading bytes: a .gz file decompressed (once)."""
    if path.suffix.lower() == ".gz":
        with gzip.open(path, "rb") as fh:
            data = fh.read()
        return lambda: io.BytesIO(data)
    return lambda: open(path, "rb")


def _pandas_read(path, open_file, **kwargs):
    """``pd.read_csv`` of the file (given its path if it can: twice as fast as a file)."""
    if path.suffix.lower() != ".gz":
        return pd.read_csv(path, **kwargs)
    with open_file() as fh:
        return pd.read_csv(fh, **kwargs)


def _rows(fh):
    """A csv.reader of a binary file, as pandas reads it (UTF-8, a byte order mark
    ignored)."""
    return csv.reader(io.TextIOWrapper(fh, encoding="utf-8-sig", newline=""))


def _blank(row):
    """Whether a row is a blank line, which pandas skips."""
    return not row or (len(row) == 1 and not row[0].strip())


def _raw_header(open_file):
    """The fields of the first line that is not blank, as written."""
    with open_file() as fh:
        return next((row for row in _rows(fh) if not _blank(row)), [])


def _check_ends_in_newline(open_file, path, key):
    """ConfigError if the file's last line (spaces aside) ends without a newline."""
    with open_file() as fh:
        fh.seek(max(fh.seek(0, io.SEEK_END) - 4096, 0))
        tail = fh.read().rstrip(b" \t")
    if tail and not tail.endswith((b"\n", b"\r")):
        with open_file() as fh:
            lines = len(fh.read().splitlines())
        raise ConfigError(
            f"config key '{key}.path': {path.name} does not end with a newline, so its "
            f"last line (line {lines}) may be cut short; if the file is complete, end it "
            "with a newline"
        )


def _names(raw_header):
    """The column names: those of the header without its trailing commas, an empty one
    named as pandas names it."""
    header = list(raw_header)
    while header and not header[-1].strip():  # a header ending in commas
        header.pop()
    return [name or f"Unnamed: {i}" for i, name in enumerate(header)]


def _check_header(header, path, id_column, key):
    """ConfigError if a column is named twice, or if the file is not comma-separated."""
    repeated = _repeated(header)
    if repeated is not None:
        raise ConfigError(
            f"config key '{key}.path': the header of {path.name} names column "
            f"{repeated!r} twice; give each column its own name"
        )
    if len(header) == 1 and header[0] != id_column:
        name = header[0]
        separator = max(";", "\t", key=name.count)
        if separator in name:
            shown = name if len(name) <= 40 else name[:37] + "..."
            what = "tabs" if separator == "\t" else repr(separator)
            raise ConfigError(
                f"config key '{key}.path': {path.name} looks separated by {what} (its "
                f"header is the one column {shown!r}), and fedsk reads comma-separated "
                "CSV; save it with ',' between values and '.' as the decimal point"
            )


def _may_have_short_rows(df, open_file, n_fields):
    """False if no row of ``df`` can have had fewer fields than the header.

    A short row leaves the last column missing. If no value is missing there, no row is
    short. Otherwise every row has the header's ``n_fields`` fields if the file has that
    many commas (outside quotes) per row: pandas refused longer rows already.
    """
    if not len(df.columns) or not df.iloc[:, -1].isna().any():
        return False
    return _commas_between_fields(open_file) != (n_fields - 1) * (len(df) + 1)


def _commas_between_fields(open_file):
    """How many commas of the file are outside quoted fields; None if it has a quote
    that does not open or close a field (pandas keeps that one as text)."""
    commas = 0
    with open_file() as fh:
        while chunk := fh.read(1 << 20):
            if b'"' in chunk:
                break
            commas += int(np.count_nonzero(np.frombuffer(chunk, np.uint8) == ord(",")))
        else:
            return commas
        fh.seek(0)
        data = fh.read().removeprefix(b"\xef\xbb\xbf")
    buf = np.frombuffer(data, np.uint8)
    quotes = np.flatnonzero(buf == ord('"'))
    if len(quotes) % 2:
        return None
    opening, closing = quotes[0::2], quotes[1::2]  # ("" inside a field: a close and an open)
    before = buf[opening[opening > 0] - 1]  # (a field opens at the start of the file)
    after = buf[closing[closing < len(buf) - 1] + 1]  # (or closes at its end)
    edges = np.frombuffer(b',\r\n"', np.uint8)
    if not (np.isin(before, edges).all() and np.isin(after, edges).all()):
        return None
    inside = sum(map(data.count, itertools.repeat(b","), opening.tolist(), closing.tolist()))
    return int(np.count_nonzero(buf == ord(","))) - inside


def _unnamed_at_end(df):
    """The last columns, if their names in the header are empty (pandas: "Unnamed: 4")."""
    columns = list(df.columns)
    while columns and str(columns[-1]).startswith("Unnamed: "):
        columns.pop()
    return list(df.columns[len(columns) :])


def _check_row_lengths(open_file, path, key):
    """``(header, most fields in a row)``; ConfigError naming the first line with fewer
    fields than the header, or with a non-empty field beyond it."""
    with open_file() as fh:
        reader = _rows(fh)
        raw_header = next((row for row in reader if not _blank(row)), [])
        header = _names(raw_header)
        widest = len(raw_header)
        for row in reader:
            if _blank(row):
                continue
            if len(row) < len(header):
                raise ConfigError(
                    f"config key '{key}.path': line {reader.line_num} of {path.name} has "
                    f"{len(row)} fields but the header names {len(header)} columns; write "
                    "a missing value as an empty field (as in 1.5,,2), or, if the file was "
                    "cut short, copy it again"
                )
            if len(row) > len(header):
                if any(field.strip() for field in row[len(header) :]):
                    raise ConfigError(
                        f"config key '{key}.path': line {reader.line_num} of {path.name} "
                        f"has {len(row)} fields but the header names {len(header)} columns; "
                        "fix that row or name the extra column in the header"
                    )
                widest = max(widest, len(row))
    return header, widest


def load_datasets(config):
    return {name: load_dataset(d) for name, d in config.datasets.items()}
