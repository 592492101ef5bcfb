"""anomvae.tables, the CSV readers, through the commands that read CSV:
delimiters, lines longer than the header, compressed and malformed files,
missing columns and non-numeric values, each named by file, line and column."""

import gzip

import pandas as pd
import pytest
from conftest import NEW, QUICK, assert_input_error, invoke, score_frame

import anomvae


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
    # pandas reads such a delimiter as a regular expression; the line is
    # then not looked for, but the error still names the file.
    lines = [line.replace(",", ";;") for line in NEW.read_text().splitlines()]
    lines[1] += ";;7"
    data = _write(tmp_path, "\n".join(lines) + "\n")
    result = invoke("score", model, data, "--delimiter", ";;")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "data.csv" in result.stderr and "more values than the header" in result.stderr


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
