"""Malformed lines and undecodable text in CSV files: an error row, a clear error, or a counted
skip; never a silent loss or a raw traceback."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

import llmbatch.data as data

GOOD_AND_BAD = "id,word\n1,apple\n2,pear,extra\n3,plum\n4\n5,fig\n"


@pytest.fixture
def bad_csv(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text(GOOD_AND_BAD)
    return path


def test_bad_lines_become_error_rows_naming_file_and_line_by_default(bad_csv):
    rows = data.read_csv(bad_csv).take_all()
    assert [row["id"] for row in rows[:3]] == [1, 3, 5]
    assert all(row.get("error") is None for row in rows[:3])
    errors = rows[3:]
    assert len(errors) == 2
    assert all(row["id"] is None and row["word"] is None for row in errors)
    assert "line 3 of" in errors[0]["error"] and str(bad_csv) in errors[0]["error"]
    assert "expected 2 columns, got 3" in errors[0]["error"]
    assert "line 5 of" in errors[1]["error"] and "got 1" in errors[1]["error"]
    assert data.read_csv(bad_csv).count() == 5


def test_bad_lines_fail_with_the_file_and_line(bad_csv):
    with pytest.raises(ValueError, match=r"rows\.csv.*Row #3.*on_bad_lines"):
        data.read_csv(bad_csv, on_bad_lines="fail").take_all()


def test_bad_lines_are_skipped_with_a_warning_counting_them(bad_csv, caplog):
    with caplog.at_level(logging.WARNING, logger="llmbatch"):
        rows = data.read_csv(bad_csv, on_bad_lines="skip").take_all()
    assert [row["id"] for row in rows] == [1, 3, 5]
    assert "error" not in rows[0]
    assert "skipped 2 malformed line(s)" in caplog.text and str(bad_csv) in caplog.text


def test_bad_lines_of_each_file_follow_its_own_rows(tmp_path):
    (tmp_path / "a.csv").write_text("id,word\n1,x,y\n2,b\n")
    (tmp_path / "b.csv").write_text("id,word\n3,c\n")
    rows = data.read_csv(tmp_path).take_all()
    assert [row["id"] for row in rows] == [2, None, 3]
    assert "a.csv" in rows[1]["error"]


def test_unknown_mode_is_an_error_naming_the_choices(bad_csv):
    with pytest.raises(ValueError, match="error_row, fail, skip"):
        data.read_csv(bad_csv, on_bad_lines="ignore")


def test_own_invalid_row_handler_is_kept(bad_csv):
    seen = []

    def handler(row):
        seen.append(row.text)
        return "skip"

    rows = data.read_csv(bad_csv, parse_options=pacsv.ParseOptions(invalid_row_handler=handler))
    assert [row["id"] for row in rows.take_all()] == [1, 3, 5]
    assert seen == ["2,pear,extra", "4"]


def test_invalid_utf8_names_the_file_line_and_byte_offset(tmp_path):
    path = tmp_path / "latin1.csv"
    before_bad_byte = b"id,word\n1,apple\n2,caf"
    path.write_bytes(before_bad_byte + b"\xe9\n")
    expected = rf"latin1\.csv: invalid UTF-8 at byte {len(before_bad_byte)} \(line 3\)"
    with pytest.raises(ValueError, match=expected):
        data.read_csv(path).take_all()
    with_encoding = data.read_csv(path, read_options=pacsv.ReadOptions(encoding="latin-1"))
    assert with_encoding.take_all()[1]["word"] == "café"
    as_bytes = data.read_csv(
        path, convert_options=pacsv.ConvertOptions(column_types={"word": pa.binary()})
    )
    assert as_bytes.take_all()[1]["word"] == b"caf\xe9"


def forty_rows_with_a_broken_quote(path, line: int) -> list[str]:
    """A CSV of 40 rows (header on line 1) whose ``line`` opens a quote it never closes."""
    lines = ["id,name,score"] + [f'{i},"name {i}",{i * 1.5}' for i in range(1, 41)]
    lines[line - 1] = f'{line - 1},"name {line - 1},{(line - 1) * 1.5}'
    path.write_text("\n".join(lines) + "\n")
    return lines


def test_an_unterminated_quote_costs_only_its_line(tmp_path):
    path = tmp_path / "quotes.csv"
    lines = forty_rows_with_a_broken_quote(path, line=11)
    rows = data.read_csv(path).take_all()
    good, errors = rows[:-1], rows[-1:]
    assert len(good) == 39 and len(errors) == 1
    assert [row["id"] for row in good] == [i for i in range(1, 41) if i != 10]
    assert all(row.get("error") is None for row in good)
    assert good[10] == {"id": 12, "name": "name 12", "score": 18.0}
    assert "line 11 of" in errors[0]["error"] and "quote" in errors[0]["error"]
    assert lines[10] in errors[0]["error"]


def test_line_numbers_after_a_cut_line_stay_those_of_the_file(tmp_path):
    path = tmp_path / "two.csv"
    forty_rows_with_a_broken_quote(path, line=5)
    text = path.read_text().splitlines()
    text[20] = "20,too,many,fields"
    path.write_text("\n".join(text) + "\n")
    errors = [row["error"] for row in data.read_csv(path).take_all() if row.get("error")]
    assert ["line 5 of" in errors[0], "line 21 of" in errors[1]] == [True, True]


def test_an_unterminated_quote_fails_or_is_skipped_as_asked(tmp_path):
    path = tmp_path / "quotes.csv"
    forty_rows_with_a_broken_quote(path, line=11)
    with pytest.raises(ValueError, match="line 11 opens a quote it does not close"):
        data.read_csv(path, on_bad_lines="fail").take_all()
    assert data.read_csv(path, on_bad_lines="skip").count() == 39


def test_values_written_over_several_lines_are_kept_beside_a_broken_quote(tmp_path):
    path = tmp_path / "multi.csv"
    path.write_text(
        'id,text,n\n1,"one line",1\n2,"two\nlines, with a comma",2\n3,"say ""hi""",3\n'
        '4,"never closed,4\n5,plain,5\n6,"three\nmore\nlines",6\n7,last,7\n'
    )
    rows = data.read_csv(path).take_all()
    good = {row["id"]: row["text"] for row in rows if row.get("error") is None}
    assert good == {
        1: "one line",
        2: "two\nlines, with a comma",
        3: 'say "hi"',
        5: "plain",
        6: "three\nmore\nlines",
        7: "last",
    }
    (error,) = [row["error"] for row in rows if row.get("error")]
    assert "line 6 of" in error and "never closed" in error
