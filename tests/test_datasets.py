"""What an operator's dataset files the party server refuses at start, and how it says so.

Every refusal is a one-line ConfigError naming the config key; see also the CSV tests in
test_party_server.py (trailing commas, rows longer than the header).
"""

import gzip

import numpy as np
import pytest

from party_server import ConfigError
from party_server._cli import main as cli_main
from party_server._config import config_from_dict
from party_server._datasets import load_dataset

from .conftest import write_host
from .test_party_server import _write_toml

KEY = "config key 'datasets.customers.path'"


def _load(cfg):
    return load_dataset(config_from_dict(cfg).datasets["customers"])


def _refusal(cfg):
    with pytest.raises(ConfigError) as err:
        _load(cfg)
    message = str(err.value)
    assert "\n" not in message
    return message


def _csv(tmp_path):
    return tmp_path / "insurer" / "customers.csv"


def _short_row(line, fields):
    return (
        f"{KEY}: line {line} of customers.csv has {fields} fields but the header names 4 "
        "columns; write a missing value as an empty field (as in 1.5,,2), or, if the file "
        "was cut short, copy it again"
    )


def _assert_loaded(ds, host_df):
    assert ds.ids.tolist() == host_df.index.tolist()
    assert ds.columns == list(host_df.columns)
    np.testing.assert_array_equal(ds.X, host_df.to_numpy())


# -- rows shorter than the header, files cut short ---------------------------------------


@pytest.mark.parametrize(
    "style",
    [
        "plain",
        "missing values in the last column",  # (the comma count then decides)
        "trailing commas",  # (then every row is read as text)
        "quoted IDs",
    ],
)
@pytest.mark.parametrize("line,cut", [(10, "c0008,0.5"), (61, "c0059")])
def test_a_row_with_fewer_fields_than_the_header_is_refused_naming_its_line(
    tmp_path, host_df, style, line, cut
):
    """pandas fills such a row with NaN: a cut-off row (or a cut ID) was served as a
    sample with missing values."""
    cfg = write_host(tmp_path, host_df)
    lines = _csv(tmp_path).read_text().splitlines()
    if style == "missing values in the last column":
        lines[3] = lines[3].rsplit(",", 1)[0] + ","
    elif style == "trailing commas":
        lines = [row + "," for row in lines]
    elif style == "quoted IDs":
        lines = ['"{}",{}'.format(*row.split(",", 1)) for row in lines]
    lines[line - 1] = cut
    _csv(tmp_path).write_text("\n".join(lines) + "\n")
    assert _refusal(cfg) == _short_row(line, 2 if line == 10 else 1)


def test_a_short_row_is_found_next_to_a_row_with_one_trailing_comma(tmp_path, host_df):
    """A row one field short and another one empty field long have as many commas as
    two whole rows."""
    cfg = write_host(tmp_path, host_df)
    lines = _csv(tmp_path).read_text().splitlines()
    lines[4] += ","
    lines[7] = lines[7].rsplit(",", 1)[0]
    _csv(tmp_path).write_text("\n".join(lines) + "\n")
    assert _refusal(cfg) == _short_row(8, 3)


def test_a_short_row_in_a_gzip_file_is_refused(tmp_path, host_df):
    cfg = write_host(tmp_path, host_df)
    lines = _csv(tmp_path).read_text().splitlines()
    lines[20] = lines[20].rsplit(",", 1)[0]
    gz = tmp_path / "insurer" / "customers.csv.gz"
    gz.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    cfg["datasets"]["customers"]["path"] = str(gz)
    assert _refusal(cfg) == _short_row(21, 3).replace("customers.csv", "customers.csv.gz")


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("cut", [0, 5, 12])
def test_a_file_that_does_not_end_in_a_newline_may_be_cut_short(tmp_path, host_df, gz, cut):
    """Cut in the middle of a value, the last row has as many fields as the others."""
    cfg = write_host(tmp_path, host_df)
    data = _csv(tmp_path).read_bytes()
    data = data[: len(data) - 1 - cut]  # (without the final newline, and then some)
    path = _csv(tmp_path)
    if gz:
        path = path.with_name("customers.csv.gz")
        data = gzip.compress(data)
        cfg["datasets"]["customers"]["path"] = str(path)
    path.write_bytes(data)
    assert _refusal(cfg) == (
        f"{KEY}: {path.name} does not end with a newline, so its last line (line 61) may be "
        "cut short; if the file is complete, end it with a newline"
    )


@pytest.mark.parametrize(
    "layout", ["as pandas writes it", "quoted IDs", "a quote inside an ID", "quoted text"]
)
def test_what_a_complete_file_may_hold_still_loads(tmp_path, host_df, layout):
    """Missing values as empty fields (also the last one of a row, where a short row
    would leave its gap), blank lines, CRLF line ends, a byte order mark, and quoted
    text with commas and newlines in it."""
    df = host_df.copy()
    df.iloc[3, 2] = df.iloc[5, 0] = np.nan
    if layout == "a quote inside an ID":
        df = df.rename(index={"c0007": 'c0"07'})  # (written unquoted: pandas reads it as is)
    cfg = write_host(tmp_path, df)
    lines = _csv(tmp_path).read_text().splitlines()
    assert lines[4].endswith(",")  # (pandas writes a missing value as an empty field)
    if layout == "quoted IDs":
        lines = ['"{}",{}'.format(*row.split(",", 1)) for row in lines]
    elif layout == "a quote inside an ID":
        lines = [row.replace('"c0""07"', 'c0"07') for row in lines]
    elif layout == "quoted text":
        lines = [lines[0] + ",note"] + [row + ',"said: ""hi"",\nbye"' for row in lines[1:]]
        cfg["datasets"]["customers"]["features"] = list(df.columns)
    lines[10:10] = ["", "   "]
    _csv(tmp_path).write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines + [""]).encode())
    _assert_loaded(_load(cfg), df)


# -- the header ----------------------------------------------------------------------------


@pytest.mark.parametrize("trailing_commas", [False, True])
def test_a_column_named_twice_in_the_header_is_refused(tmp_path, host_df, trailing_commas):
    """pandas renamed the second one 'claims.1' (unless a row had trailing commas)."""
    cfg = write_host(tmp_path, host_df)
    lines = _csv(tmp_path).read_text().splitlines()
    lines[0] = lines[0].replace("tenure", "claims")
    if trailing_commas:
        lines[5] += ","
    _csv(tmp_path).write_text("\n".join(lines) + "\n")
    assert _refusal(cfg) == (
        f"{KEY}: the header of customers.csv names column 'claims' twice; give each column "
        "its own name"
    )


def test_a_parquet_file_with_two_columns_of_one_name_is_refused(tmp_path, host_df):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    cfg = write_host(tmp_path, host_df)
    table = pa.table(
        [pa.array(host_df.index.to_list())] + [pa.array(host_df[c]) for c in host_df.columns],
        names=["customer_id", "age", "claims", "age"],
    )
    path = tmp_path / "insurer" / "customers.parquet"
    pq.write_table(table, path)
    cfg["datasets"]["customers"]["path"] = str(path)
    assert _refusal(cfg) == (
        f"{KEY}: customers.parquet has two columns named 'age'; give each column its own name"
    )


@pytest.mark.parametrize("sep,what", [(";", "';'"), ("\t", "tabs")])
def test_a_file_not_separated_by_commas_is_named_as_such(tmp_path, host_df, sep, what):
    """It read as one column, and the ID column was 'not in the file'. (With decimal
    commas, its rows had more fields than the header.)"""
    cfg = write_host(tmp_path, host_df)
    path = _csv(tmp_path)
    data = host_df.rename_axis("customer_id").reset_index()
    data.to_csv(path, sep=sep, decimal="," if sep == ";" else ".", index=False)
    header = sep.join(data.columns)
    assert _refusal(cfg) == (
        f"{KEY}: customers.csv looks separated by {what} (its header is the one column "
        f"{header!r}), and fedsk reads comma-separated CSV; save it with ',' between values "
        "and '.' as the decimal point"
    )


def test_a_one_column_file_without_the_id_column_still_says_so(tmp_path, host_df):
    cfg = write_host(tmp_path, host_df)
    _csv(tmp_path).write_text("customer\nc0001\n")
    assert _refusal(cfg) == (
        "config key 'datasets.customers.id_column': column 'customer_id' is not in customers.csv"
    )


# -- the config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "features,message",
    [
        (["age", "claims", "age"], "names column 'age' twice; name each column once"),
        (
            ["customer_id", "age"],
            "names the ID column 'customer_id'; the sample IDs are not a feature, leave it out",
        ),
    ],
)
def test_features_name_each_column_once_and_not_the_ids(tmp_path, host_df, features, message):
    cfg = write_host(tmp_path, host_df)
    cfg["datasets"]["customers"]["features"] = features
    assert _refusal(cfg) == f"config key 'datasets.customers.features': {message}"


@pytest.mark.parametrize("name", ["customers.csv", "customers"])
def test_a_directory_is_not_a_dataset_file(tmp_path, host_df, name):
    cfg = write_host(tmp_path, host_df)
    folder = tmp_path / "insurer" / "export" / name
    folder.mkdir(parents=True)
    cfg["datasets"]["customers"]["path"] = str(folder)
    assert _refusal(cfg) == (
        f"{KEY}: {folder} is a directory, not a file; give the path of the CSV or Parquet file"
    )


def test_a_parquet_directory_as_spark_writes_it_still_loads(tmp_path, host_df):
    pytest.importorskip("pyarrow")
    cfg = write_host(tmp_path, host_df)
    folder = tmp_path / "insurer" / "customers.parquet"
    folder.mkdir()
    host_df.rename_axis("customer_id").reset_index().to_parquet(folder / "part-00000.parquet")
    (folder / "_SUCCESS").write_bytes(b"")
    cfg["datasets"]["customers"]["path"] = str(folder)
    _assert_loaded(_load(cfg), host_df)


def test_the_server_stops_at_start_with_the_one_line(tmp_path, host_df, capsys, monkeypatch):
    def serve(*args, **kwargs):
        raise AssertionError("the server started with the file cut short")

    monkeypatch.setattr("waitress.create_server", serve)
    cfg = write_host(tmp_path, host_df)
    _csv(tmp_path).write_bytes(_csv(tmp_path).read_bytes()[:-20])
    toml = tmp_path / "host.toml"
    _write_toml(toml, cfg)
    assert cli_main(["--config", str(toml)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"party-server: {KEY}: customers.csv does not end with a newline")
    assert "\n" not in err


def test_an_empty_file_is_still_refused(tmp_path, host_df):
    cfg = write_host(tmp_path, host_df)
    _csv(tmp_path).write_text("")
    message = _refusal(cfg)
    assert message.startswith(f"{KEY}: cannot read ") and "No columns to parse" in message


def test_a_parquet_file_with_the_ids_as_its_index_loads(tmp_path, host_df):
    # df.set_index("customer_id").to_parquet(...) keeps the IDs as pandas' index
    pytest.importorskip("pyarrow")
    cfg = write_host(tmp_path, host_df)
    path = tmp_path / "insurer" / "customers.parquet"
    host_df.rename_axis("customer_id").to_parquet(path)
    cfg["datasets"]["customers"]["path"] = str(path)
    _assert_loaded(_load(cfg), host_df)


def _rewrite(tmp_path, change):
    path = _csv(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    change(lines)
    path.write_text("".join(lines))


def test_bad_values_are_located_by_row_and_column(tmp_path, host_df):
    cfg = write_host(tmp_path, host_df)
    first = host_df.index[0]

    def duplicate(lines):  # data row 7 repeats data row 1's ID
        lines[7] = first + lines[7][lines[7].index(",") :]

    _rewrite(tmp_path, duplicate)
    message = _refusal(cfg)
    assert f"1 duplicate IDs, e.g. {first!r} (data rows 1, 7, counted from 1" in message

    cfg = write_host(tmp_path, host_df)
    _rewrite(tmp_path, lambda lines: lines.__setitem__(5, lines[5][lines[5].index(",") :]))
    assert "1 rows have no ID (data row 5, counted from 1 after the header)" in _refusal(cfg)

    cfg = write_host(tmp_path, host_df)
    df = host_df.copy()
    df.iloc[[3, 8], 1] = -np.inf
    cfg = write_host(tmp_path, df)
    message = _refusal(cfg).replace("config key 'datasets.customers'", "")
    assert f"column {df.columns[1]!r} holds infinity (data rows 4, 9, counted" in message
