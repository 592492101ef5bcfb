"""Parquet data (anomvae.parquet) read by fit, score and calibrate, and
score's Parquet output. Files are written with pandas/pyarrow in tmp dirs."""

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import NEW, QUICK, TRAIN, assert_input_error, invoke, score_frame, write_digits

from anomvae import parquet
from anomvae.errors import DataError
from anomvae.images import is_image_source
from anomvae.tables import RowNames


def csv_frame(path):
    """A CSV file as anomvae reads it (ids as text), to write as Parquet."""
    return pd.read_csv(path, dtype={"record_id": str})


@pytest.fixture(scope="module")
def new_parquet(tmp_path_factory):
    """cardio_new.csv as Parquet, in row groups of 50 rows."""
    path = tmp_path_factory.mktemp("pq") / "new.parquet"
    csv_frame(NEW).to_parquet(path, row_group_size=50, index=False)
    return path


# ------------------------------------------------------------ detection


def test_parquet_sources_are_detected_and_never_images(tmp_path):
    frame = pd.DataFrame({"a": [1.0]})
    (tmp_path / "nested" / "year=2024").mkdir(parents=True)
    frame.to_parquet(tmp_path / "nested" / "year=2024" / "part-0.parquet")
    frame.to_parquet(tmp_path / "one.pq")
    write_digits(tmp_path / "digits", 0, 2)
    for source in (tmp_path / "one.pq", tmp_path / "x.PARQUET", tmp_path / "nested", f"{tmp_path}/nested/**/*.parquet"):
        assert parquet.is_parquet_source(source), source
        assert not is_image_source(source), source
    for source in (tmp_path / "digits", f"{tmp_path}/digits/*.png", "-", NEW, [str(tmp_path / "one.pq")]):
        assert not parquet.is_parquet_source(source), source
    assert is_image_source(tmp_path / "digits")
    # A folder holding a Parquet file is Parquet data, images or not beside it.
    frame.to_parquet(tmp_path / "digits" / "stray.parquet")
    assert parquet.is_parquet_source(tmp_path / "digits") and not is_image_source(tmp_path / "digits")


def test_files_of_a_folder_or_glob_in_stable_order(tmp_path):
    frame = pd.DataFrame({"a": [1.0]})
    for name in ("b/part-0.parquet", "a/part-1.parquet", "a/part-0.parquet", "_SUCCESS", "a/.hidden.parquet"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        frame.to_parquet(tmp_path / name)
    expected = [str(tmp_path / n) for n in ("a/part-0.parquet", "a/part-1.parquet", "b/part-0.parquet")]
    assert parquet.list_files(tmp_path) == expected
    assert parquet.list_files(f"{tmp_path}/*/*.parquet") == expected


# ------------------------------------------------------------- reading


def test_streams_by_batches_that_never_span_files(tmp_path):
    frame = pd.DataFrame({"x": np.arange(50.0), "id": np.arange(50)})
    frame.iloc[:23].to_parquet(tmp_path / "0.parquet", row_group_size=10)
    frame.iloc[23:].to_parquet(tmp_path / "1.parquet", row_group_size=10)
    chunks = list(parquet.iter_parquet(tmp_path, columns=["x", "id"], chunk_size=7, text_columns=["id"]))
    assert max(len(c) for c in chunks) <= 7
    assert [c.index[0] for c in chunks][:5] == [0, 7, 14, 21, 23]  # file 0 ends at row 23
    whole = pd.concat(chunks)
    np.testing.assert_array_equal(whole.index, np.arange(50))
    np.testing.assert_array_equal(whole["x"], frame["x"])
    assert whole["x"].dtype == np.float64 and whole["id"].dtype == pd.ArrowDtype(pa.int64())


def test_a_large_row_group_is_not_buffered_ahead(tmp_path):
    """A file written as one row group (pyarrow's default up to a million
    rows) is read page by page: Arrow then holds about the decoded group,
    where its defaults (pre-buffering whole column chunks) held twice that."""
    rows, columns = 300_000, [f"x{i}" for i in range(10)]
    values = np.random.default_rng(0).normal(size=(rows, len(columns)))
    pq.write_table(pa.table(dict(zip(columns, values.T))), tmp_path / "one.parquet", row_group_size=rows)
    decoded, peak, seen = values.nbytes, 0, 0
    for frame in parquet.iter_parquet(tmp_path / "one.parquet", columns=columns, chunk_size=10_000):
        peak = max(peak, pa.total_allocated_bytes())
        seen += len(frame)
    assert seen == rows
    assert peak < 1.5 * decoded, f"{peak / 1e6:.0f} MB held for a {decoded / 1e6:.0f} MB row group"


def test_rows_named_by_file_and_row_index(tmp_path):
    pd.DataFrame({"a": [1.0] * 3}).to_parquet(tmp_path / "0.parquet")
    pd.DataFrame({"a": [1.0] * 4}).to_parquet(tmp_path / "1.parquet")
    names = RowNames(tmp_path)
    assert names(4) == f"{tmp_path / '1.parquet'} row 1"
    assert names.text([0, 3]) == f"{tmp_path / '0.parquet'} row 0, {tmp_path / '1.parquet'} row 0"
    assert RowNames(NEW).text([0, 3]) == "line(s) 2, 5"


def test_reader_errors_name_the_file_and_column(tmp_path):
    pd.DataFrame({"a": [1.0], "b": ["x"]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DataError, match=r"t\.parquet: missing column\(s\) 'c'"):
        list(parquet.iter_parquet(tmp_path / "t.parquet", columns=["a", "c"], chunk_size=5))
    with pytest.raises(DataError, match=r"t\.parquet: column 'b' is of Parquet type (large_)?string, not a number"):
        list(parquet.iter_parquet(tmp_path / "t.parquet", columns=["a", "b"], chunk_size=5))
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: cannot be read as Parquet"):
        list(parquet.iter_parquet(tmp_path / "junk.parquet", columns=["a"], chunk_size=5))


# ------------------------------------------------ fit, score, calibrate


def test_fit_on_parquet_equals_fit_on_the_csv(tmp_path):
    csv_frame(TRAIN).to_parquet(tmp_path / "train.parquet", row_group_size=100)
    for source, model in ((TRAIN, "csv.anomvae"), (tmp_path / "train.parquet", "pq.anomvae")):
        result = invoke("fit", source, "-o", tmp_path / model, "--id-column", "record_id", "-q", *QUICK)
        assert result.exit_code == 0, result.output
    a = invoke("score", tmp_path / "csv.anomvae", NEW)
    b = invoke("score", tmp_path / "pq.anomvae", NEW)
    assert a.exit_code == b.exit_code == 0 and a.stdout == b.stdout


def test_score_parquet_gives_the_csv_scores(model, new_parquet):
    a = invoke("score", model, NEW)
    b = invoke("score", model, new_parquet, "--chunk-size", "7")
    assert b.exit_code == 0, b.output
    assert a.stdout == b.stdout and len(b.stdout.splitlines()) == 551


def test_score_a_folder_and_a_glob_in_path_order(model, tmp_path):
    frame = csv_frame(NEW)
    (tmp_path / "b").mkdir()
    frame.iloc[:200].to_parquet(tmp_path / "a.parquet")
    frame.iloc[200:450].to_parquet(tmp_path / "b" / "part-0.parquet", row_group_size=64)
    frame.iloc[450:].to_parquet(tmp_path / "b" / "part-1.parquet")
    expected = invoke("score", model, NEW).stdout
    assert invoke("score", model, tmp_path).stdout == expected
    assert invoke("score", model, f"{tmp_path}/**/*.parquet").stdout == expected


def test_outputs_never_replace_a_file_of_a_parquet_folder(model, tmp_path):
    frame = csv_frame(NEW)
    (tmp_path / "data").mkdir()
    frame.iloc[:200].to_parquet(tmp_path / "data" / "part-0.parquet")
    frame.iloc[200:].to_parquet(tmp_path / "data" / "part-1.parquet")
    before = (tmp_path / "data" / "part-1.parquet").read_bytes()
    for args in (["score", model, tmp_path / "data", "-o", tmp_path / "data" / "part-1.parquet"],
                 ["calibrate", model, f"{tmp_path}/data/*.parquet", "-o", tmp_path / "data" / "part-1.parquet"]):
        result = invoke(*args)
        assert result.exit_code == 2 and "a file of DATA" in result.stderr, result.output
    assert (tmp_path / "data" / "part-1.parquet").read_bytes() == before


def test_invalid_rows_are_named_or_marked(model, tmp_path):
    frame = csv_frame(NEW)
    frame.loc[3, "LB"], frame.loc[310, "AC"] = np.nan, np.inf
    frame.iloc[:300].to_parquet(tmp_path / "0.parquet")
    frame.iloc[300:].to_parquet(tmp_path / "1.parquet")
    first, second = tmp_path / "0.parquet", tmp_path / "1.parquet"
    assert_input_error(invoke("score", model, tmp_path), f"{tmp_path}: 1 row(s) with empty, NaN or infinite "
                       f"values at {first} row 3 ({first} row 3: empty or NaN value in column 'LB')",
                       "--invalid-rows mark")
    out = score_frame(invoke("score", model, tmp_path, "--invalid-rows", "mark"))
    assert out["status"][3] == f"not scored: empty or NaN value in column 'LB' ({first} row 3)"
    assert out["status"][310] == f"not scored: infinite value in column 'AC' ({second} row 10)"
    assert_input_error(invoke("fit", tmp_path, "-o", tmp_path / "m", *QUICK), f"{first} row 3")
    result = invoke("calibrate", model, tmp_path, "-o", tmp_path / "c.anomvae", "--invalid-rows", "skip")
    assert result.exit_code == 0, result.output
    assert f"skipped 2 row(s) with empty, NaN or infinite values at {first} row 3, {second} row 10" in result.stderr


def test_calibrate_on_parquet_equals_calibrate_on_the_csv(model, new_parquet, tmp_path):
    import anomvae

    for source, name in ((NEW, "csv.anomvae"), (new_parquet, "pq.anomvae")):
        result = invoke("calibrate", model, source, "-o", tmp_path / name, "-q")
        assert result.exit_code == 0, result.output
    assert anomvae.load(tmp_path / "csv.anomvae").threshold_ == anomvae.load(tmp_path / "pq.anomvae").threshold_


# ------------------------------------------------------- Parquet output


def test_parquet_output_is_typed_and_round_trips(model, tmp_path):
    frame = csv_frame(NEW).assign(record_id=np.arange(550, dtype=np.int32))
    frame.loc[4, "LB"] = np.nan
    frame.to_parquet(tmp_path / "new.parquet")
    calibrated = tmp_path / "calibrated.anomvae"
    assert invoke("calibrate", model, NEW, "-o", calibrated, "-q").exit_code == 0
    result = invoke("score", calibrated, tmp_path / "new.parquet", "-o", tmp_path / "out.parquet", "--chunk-size",
                    "100", "--invalid-rows", "mark")
    assert result.exit_code == 0, result.output
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.schema.types == [pa.int32(), pa.float64(), pa.float64(), pa.bool_(), pa.string()]
    assert table.schema.names == ["record_id", "anomaly_score", "p_value", "is_anomaly", "status"]
    assert pq.ParquetFile(tmp_path / "out.parquet").metadata.num_row_groups == 6
    out = table.to_pandas()
    text = score_frame(invoke("score", calibrated, tmp_path / "new.parquet", "--invalid-rows", "mark"))
    np.testing.assert_array_equal(out["record_id"], np.arange(550))
    np.testing.assert_array_equal(out["anomaly_score"], text["anomaly_score"])  # exact, not rounded
    np.testing.assert_array_equal(out["p_value"], text["p_value"])
    assert out["is_anomaly"].isna().tolist() == (text["status"] != "scored").tolist()
    assert out["is_anomaly"].dropna().tolist() == text["is_anomaly"].dropna().tolist()
    assert out["status"].tolist() == text["status"].tolist()


def test_format_parquet_whatever_the_output_name(model, tmp_path):
    result = invoke("score", model, NEW, "--format", "parquet", "-o", tmp_path / "results.bin")
    assert result.exit_code == 0, result.output
    out = pd.read_parquet(tmp_path / "results.bin")
    assert out["record_id"].tolist() == csv_frame(NEW)["record_id"].tolist()
    assert pq.read_schema(tmp_path / "results.bin").field("record_id").type == pa.string()


def test_parquet_to_standard_output_is_refused(model, new_parquet):
    for args in (["--format", "parquet"], ["-o", "-", "--format", "parquet"]):
        result = invoke("score", model, new_parquet, *args)
        assert result.exit_code == 2 and "Parquet results are binary: give -o FILE.parquet" in result.stderr


def test_a_failure_leaves_no_partial_parquet_output(model, tmp_path):
    frame = csv_frame(NEW)
    frame.loc[520, "LB"] = np.nan  # in the last chunk: earlier chunks were written already
    frame.to_parquet(tmp_path / "new.parquet", row_group_size=100)
    target = tmp_path / "out" / "results.parquet"
    target.parent.mkdir()
    target.write_bytes(b"previous")
    result = invoke("score", model, tmp_path / "new.parquet", "-o", target, "--chunk-size", "100")
    assert_input_error(result, f"{tmp_path / 'new.parquet'} row 520")
    assert target.read_bytes() == b"previous" and os.listdir(target.parent) == ["results.parquet"]


def test_csv_dialect_options_are_refused_for_parquet(model, new_parquet, tmp_path):
    for args in (["score", model, new_parquet, "--delimiter", ";"],
                 ["calibrate", model, new_parquet, "--delimiter", "tab", "-o", tmp_path / "c.anomvae"],
                 ["fit", new_parquet, "-o", tmp_path / "m.anomvae", "--delimiter", ";", *QUICK]):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert f"apply to CSV data; {new_parquet} is read as Parquet" in result.stderr


def test_typed_ids_in_every_output(model, tmp_path):
    frame = csv_frame(NEW).iloc[:5]
    frame = frame.assign(record_id=pd.array([7, None, 9, 10, 11], dtype="Int64"),
                         ts=pd.Timestamp("2024-06-01") + pd.to_timedelta(np.arange(5), "min"))
    frame.to_parquet(tmp_path / "typed.parquet")
    ids = ["--id-column", "record_id", "--id-column", "ts"]
    result = invoke("score", model, tmp_path / "typed.parquet", *ids, "--summary-json", tmp_path / "s.json",
                    "--summary-top", "5")
    assert result.stdout.splitlines()[1].startswith("7,2024-06-01T00:00:00,")
    assert result.stdout.splitlines()[2].startswith(",2024-06-01T00:01:00,")  # a null id is empty
    tops = json.loads((tmp_path / "s.json").read_text())["top_anomalies"]
    assert {(t["record_id"], t["ts"]) for t in tops} >= {(None, "2024-06-01T00:01:00"), (7, "2024-06-01T00:00:00")}
    invoke("score", model, tmp_path / "typed.parquet", *ids, "-o", tmp_path / "out.jsonl")
    second = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[1])
    assert second["ts"] == "2024-06-01T00:01:00" and second["record_id"] is None
    invoke("score", model, tmp_path / "typed.parquet", *ids, "-o", tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet")
    assert pa.types.is_timestamp(table.schema.field("ts").type)
    assert table.schema.field("record_id").type == pa.int64()
    assert table.column("record_id").to_pylist() == [7, None, 9, 10, 11]
