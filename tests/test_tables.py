"""anomvae.tables, the CSV readers, through the commands that read CSV:
delimiters, lines longer than the header, compressed and malformed files,
missing columns and non-numeric values, each named by file, line and column."""

import csv
import gzip
import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import FEATURES, NEW, QUICK, assert_input_error, invoke, score_frame
from conftest import draw_cli_rows as draw

import anomvae
from anomvae import tables
from anomvae.errors import DataError
from anomvae.scoring import score_csv


def _write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_trailing_delimiter_shifts_no_column(model, tmp_path):
    # Every data line ends in a delimiter: one empty field more than the
    # header. pandas would make the first column the index and shift the rest.
    trailing = _write(tmp_path, "".join(
        line + ("," if number else "") + "\n" for number, line in enumerate(NEW.read_text().splitlines())
    ))
    plain = score_frame(invoke("score", model, NEW))
    shifted = score_frame(invoke("score", model, trailing))
    pd.testing.assert_frame_equal(shifted, plain)
    result = invoke("fit", trailing, "-o", tmp_path / "m", "--id-column", "record_id", *QUICK)
    assert result.exit_code == 0, result.output
    assert list(anomvae.load(tmp_path / "m").feature_names_in_) == list(pd.read_csv(NEW, nrows=0).columns[1:])


def test_trailing_delimiters_from_standard_input_or_a_compressed_file(model, tmp_path):
    import gzip

    text = "".join(line + ("," if number else "") + "\n" for number, line in enumerate(NEW.read_text().splitlines()))
    with gzip.open(tmp_path / "data.csv.gz", "wt") as handle:
        handle.write(text)
    plain = score_frame(invoke("score", model, NEW))
    pd.testing.assert_frame_equal(score_frame(invoke("score", model, "-", input=text)), plain)
    pd.testing.assert_frame_equal(score_frame(invoke("score", model, tmp_path / "data.csv.gz")), plain)
    lost = text.replace(",\n", ",9\n", 3)  # the third data line holds a value beyond the header
    assert_input_error(invoke("score", model, "-", input=lost), "<stdin>: a line has more values than the header")


@pytest.mark.parametrize("command", ["fit", "score"])
def test_values_beyond_the_header_are_named(model, tmp_path, command):
    lines = NEW.read_text().splitlines()
    lines[1] += ","  # a trailing delimiter loses nothing; a value beyond the header would be lost
    lines[4] += ",7"
    data = _write(tmp_path, "\n".join(lines) + "\n")
    args = ["fit", data, "-o", tmp_path / "m"] if command == "fit" else ["score", model, data]
    assert_input_error(invoke(*args), "data.csv: line 5 has more values than the header has columns")
    assert not (tmp_path / "m").exists()


def test_values_beyond_the_header_with_a_delimiter_of_two_characters(model, tmp_path):
    # The command takes one character; in Python pandas reads a longer
    # delimiter as a regular expression. The line is then not looked for,
    # but the error still names the file.
    lines = [line.replace(",", ";;") for line in NEW.read_text().splitlines()]
    lines[1] += ";;7"
    data = _write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(DataError, match="data.csv: .*more values than the header"):
        score_csv(anomvae.load(model), str(data), io.StringIO(), delimiter=";;")


def test_unreadable_part_far_down_a_compressed_file_is_named(model, tmp_path):
    # About 3 MB of text: pandas reads far less than that for the first
    # chunk, so the cut is met while reading a later one.
    header, *rows = NEW.read_text().splitlines(keepends=True)
    whole = gzip.compress((header + "".join(rows * 50)).encode())
    (tmp_path / "cut.csv.gz").write_bytes(whole[: len(whole) * 2 // 3])
    result = invoke("score", model, tmp_path / "cut.csv.gz", "-o", tmp_path / "out.csv", "--chunk-size", "50")
    assert_input_error(result, "cut.csv.gz: cannot be read")
    assert not (tmp_path / "out.csv").exists()


def test_malformed_line_far_down_a_file_is_named(model, tmp_path):
    lines = NEW.read_text().splitlines()
    lines[300] += ",7"  # a longer line after the first chunk: the parser's own error, with the file
    data = _write(tmp_path, "\n".join(lines) + "\n")
    assert_input_error(invoke("score", model, data, "--chunk-size", "100"),
                       "data.csv: cannot be parsed as CSV", "line 301")


def test_missing_model_columns_are_listed(model, new_frame, tmp_path):
    new_frame.drop(columns=["AC", "Mean"]).to_csv(tmp_path / "d.csv", index=False)
    assert_input_error(invoke("score", model, tmp_path / "d.csv"), "missing column(s) 'AC', 'Mean'")


def test_non_numeric_value_names_column_line_and_value(model, new_frame, tmp_path):
    frame = new_frame.astype({"MSTV": object})
    frame.loc[7, "MSTV"] = "n/a?"
    frame.to_csv(tmp_path / "d.csv", index=False)
    assert_input_error(invoke("score", model, tmp_path / "d.csv"), "column 'MSTV', line 9", "'n/a?'")
    assert_input_error(invoke("fit", tmp_path / "d.csv", "-o", tmp_path / "m", *QUICK), "column 'MSTV', line 9")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "the file is empty"),
        (NEW.read_text().splitlines()[0] + "\n", "header but no data rows"),
        (NEW.read_text().replace(",", ";"), "delimited by ';'"),
    ],
    ids=["empty", "header-only", "semicolons"],
)
def test_unusable_files(model, tmp_path, text, fragment):
    path = _write(tmp_path, text)
    assert_input_error(invoke("score", model, path), fragment)
    assert_input_error(invoke("fit", path, "-o", tmp_path / "m"), fragment)
    assert not (tmp_path / "m").exists()


def test_other_delimiter_works_when_named(model, tmp_path):
    path = _write(tmp_path, NEW.read_text().replace(",", ";"))
    baseline = invoke("score", model, NEW).stdout
    assert invoke("score", model, path, "--delimiter", ";").stdout == baseline


# ------------------------------------ values as written, hostile headers


# Id values that pandas would read as missing or strip, and must not.
VERBATIM_IDS = ["NA", "null", "None", "nan", "N/A", "", " padded ", "  ", "#N/A", "NULL"]
# Feature cells that are missing (the row cannot be scored), spaces or not.
MISSING_CELLS = {1: "NA", 3: " NA", 5: "", 7: "  "}


def _batch_text(ids, seed=30):
    """A batch of the ``files`` models' features with the id column first,
    written by hand so that nothing is quoted; MISSING_CELLS in column 'a'."""
    rows = draw(len(ids), seed=seed).to_numpy().tolist()
    lines = ["id," + ",".join(FEATURES)]
    for i, (name, row) in enumerate(zip(ids, rows)):
        cells = [repr(v) for v in row]
        cells[0] = MISSING_CELLS.get(i, cells[0])
        lines.append(",".join([name, *cells]))
    return "\n".join(lines) + "\n"


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"not standard JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_id_values_come_out_as_written(files, tmp_path, fmt):
    data = _write(tmp_path, _batch_text(VERBATIM_IDS))
    result = invoke("score", files / "plain.anomvae", data, "--format", fmt, "--invalid-rows", "mark",
                    "--summary-json", tmp_path / "summary.json")
    assert result.exit_code == 0, result.output
    if fmt == "csv":
        records = [dict(zip(["id", "anomaly_score", "is_anomaly", "status"], row))
                   for row in list(csv.reader(io.StringIO(result.stdout)))[1:]]
    else:
        records = [_strict_json(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in records] == VERBATIM_IDS
    # In the features the same markers, spaces or not, are missing values.
    not_scored = [i for i, r in enumerate(records) if r["status"] != "scored"]
    assert not_scored == sorted(MISSING_CELLS)
    assert all("empty or NaN value in column 'a'" in records[i]["status"] for i in not_scored)
    top = _strict_json((tmp_path / "summary.json").read_text())["top_anomalies"]
    assert len(top) == 6 and {t["id"] for t in top} <= set(VERBATIM_IDS)


@pytest.mark.parametrize("command", ["fit", "score", "calibrate"])
def test_a_column_named_twice_is_refused(files, tmp_path, command):
    # pandas would silently read the second one as 'a.1'.
    header, rest = (files / "reference.csv").read_text().split("\n", 1)
    assert header == "e,d,c,b,a,note"
    data = _write(tmp_path, "e,d,c,b,a,a\n" + rest)
    args = {"fit": ["fit", data, "-o", tmp_path / "m", *QUICK],
            "score": ["score", files / "plain.anomvae", data],
            "calibrate": ["calibrate", files / "plain.anomvae", data, "-o", tmp_path / "m"]}[command]
    assert_input_error(invoke(*args), "data.csv: the header names column 'a' more than once")
    assert not (tmp_path / "m").exists()


def test_closed_stdin_is_named(monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(DataError, match="<stdin>: standard input is closed"):
        tables.read_csv("-")


def test_closed_stdin_is_an_input_error_of_the_command(files):
    # fd 0 closed, as by `anomvae score MODEL - <&-`: Python's sys.stdin is None.
    code = "import sys\nfrom anomvae.cli import main\nmain(sys.argv[1:])"
    result = subprocess.run([sys.executable, "-c", code, "score", str(files / "plain.anomvae"), "-"],
                            capture_output=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.close(0))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: <stdin>: standard input is closed")


@pytest.mark.parametrize("value, fragment", [
    ("", "it is empty"), (";;", "';;' is 2 characters"), ("\n", "ends lines"), ('"', "quotes fields"),
])
@pytest.mark.parametrize("command", ["fit", "score", "calibrate"])
def test_unusable_delimiters_are_usage_errors(files, tmp_path, value, fragment, command):
    data = files / "reference.csv"
    args = {"fit": ["fit", data, "-o", tmp_path / "m"], "score": ["score", files / "plain.anomvae", data],
            "calibrate": ["calibrate", files / "plain.anomvae", data, "-o", tmp_path / "m"]}[command]
    assert_input_error(invoke(*args, "--delimiter", value), "'--delimiter'", fragment)
    assert_input_error(invoke(*args, "--decimal", value), "'--decimal'", fragment)
    assert_input_error(invoke(*args, "--decimal", ","), "--decimal ',' is also the --delimiter")


def test_a_tab_delimiter_can_be_named(model, tmp_path):
    path = _write(tmp_path, NEW.read_text().replace(",", "\t"))
    baseline = invoke("score", model, NEW).stdout
    for name in ("\\t", "tab", "\t"):
        assert invoke("score", model, path, "--delimiter", name).stdout == baseline, name


def test_decimal_comma_files_are_read_with_decimal(model, tmp_path):
    path = _write(tmp_path, NEW.read_text().replace(",", ";").replace(".", ","))
    baseline = invoke("score", model, NEW).stdout
    result = invoke("score", model, path, "--delimiter", ";")
    assert_input_error(result, "column 'LB', line 2: value '0,004912' is not a number", "--decimal ','")
    assert invoke("score", model, path, "--delimiter", ";", "--decimal", ",").stdout == baseline
    result = invoke("fit", path, "-o", tmp_path / "m", "--delimiter", ";", "--id-column", "record_id", *QUICK)
    assert_input_error(result, "--decimal ','")
    result = invoke("fit", path, "-o", tmp_path / "m", "--delimiter", ";", "--decimal", ",",
                    "--id-column", "record_id", *QUICK)
    assert result.exit_code == 0, result.output


def test_a_column_of_decimal_commas_is_not_skipped_as_text(tmp_path):
    # Every value has a comma: not one parses, yet the column is not text.
    frame = pd.DataFrame({"x": ["1,5", "2,25", "-0,5"], "y": ["1", "2", "3"]})
    with pytest.raises(DataError, match=r"column 'x' holds numbers written with a decimal comma .*--decimal ','"):
        tables.select_features(frame, name="d.csv")
    assert tables.select_features(frame, name="d.csv", decimal=",") == (["x", "y"], [])
    np.testing.assert_array_equal(tables.to_numeric(frame, ["x"], name="d.csv", decimal=","), [[1.5], [2.25], [-0.5]])
    # With a decimal comma, a point is no decimal mark: "1.234" may well mean 1234.
    with pytest.raises(DataError, match="value '1.234' is not a number"):
        tables.to_numeric(pd.DataFrame({"x": ["1,5", "1.234"]}), ["x"], name="d.csv", decimal=",")


@pytest.mark.parametrize("where", ["value", "header"])
def test_a_huge_value_is_quoted_short(model, tmp_path, where):
    huge = "a" * 1_000_000
    if where == "value":
        lines = NEW.read_text().splitlines()
        cells = lines[1].split(",")
        cells[9] = huge  # MSTV
        lines[1] = ",".join(cells)
        text, fragments = "\n".join(lines) + "\n", ["column 'MSTV', line 2: value 'aaa", "(1000000 characters)"]
    else:
        text, fragments = f"{huge};b\n1;2\n", ["the header is a single column 'aaa", "(1000002 characters)"]
    result = invoke("score", model, _write(tmp_path, text))
    assert_input_error(result, *fragments)
    assert len(result.stderr.splitlines()[-1]) < 300


def test_a_header_name_holding_a_line_break_is_read_from_stdin_too(monkeypatch):
    text = '"rec\nord",a,b\nx1,1,2\nx2,3,4\n'
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    from_stdin = tables.read_csv("-", text_columns=("rec\nord",))
    assert list(from_stdin.columns) == ["rec\nord", "a", "b"] and list(from_stdin["rec\nord"]) == ["x1", "x2"]
    assert from_stdin["b"].tolist() == [2, 4]
