"""styles.csv reading: malformed rows, invalid/duplicate ids, missing values."""

import re
from pathlib import Path

import pytest

from fashion.data.styles import StylesFileError, read_styles

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "styles.csv"
    path.write_text(HEADER + body)
    return path


def test_rows_with_extra_commas_are_skipped_and_counted(tmp_path):
    path = write(tmp_path, (
        "1,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Blue Tee\n"
        "2,Men,Apparel,Topwear,Shirts,White,Fall,2011,Formal,Shirt, white, slim\n"  # 2 stray commas
        "3,Women,Footwear,Shoes,Heels,Black,Winter,2012,Casual,Heels\n"
    ))
    frame, report = read_styles(path)
    assert frame["id"].tolist() == [1, 3]
    assert report.malformed_rows == 1
    assert report.malformed_examples[0].startswith("2,Men")
    assert report.rows_read == 2


def test_a_malformed_first_row_is_skipped_like_any_other_not_read_as_an_index(tmp_path):
    """pandas takes the first column for the index when only the first data row has an extra field: every
    label moved one column left, every id became invalid, and a folder of good rows read as empty."""
    path = write(tmp_path, (
        "1,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Tee, blue\n"   # the first row, one stray comma
        "2,Women,Footwear,Shoes,Heels,Black,Winter,2012,Casual,Heels\n"
    ))
    frame, report = read_styles(path)
    assert frame["id"].tolist() == [2] and frame.loc[0, "gender"] == "Women"
    assert (report.malformed_rows, report.invalid_ids) == (1, 0)
    assert report.malformed_examples[0].startswith("1,Men")


def test_a_styles_file_in_a_spreadsheets_code_page_is_named_with_its_line_and_utf8_with_a_bom_reads(tmp_path):
    """A spreadsheet saves "CSV" in its own code page (cp1252): pandas' UnicodeDecodeError named neither the
    file nor the line. Its "CSV UTF-8" starts with a byte-order mark, which reads as any UTF-8 file."""
    text = HEADER + "1,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Tee\n2,Women,Apparel,Topwear,Tops,Red,Fall,2012,Casual,Caf\u00e9 top\n"
    path = tmp_path / "styles.csv"
    path.write_bytes(text.encode("cp1252"))
    with pytest.raises(StylesFileError, match=re.escape(f"{path} is not UTF-8 text (line 3): save it as UTF-8")):
        read_styles(path)
    path.write_bytes(text.encode("utf-8-sig"))
    frame, _ = read_styles(path)
    assert frame["id"].tolist() == [1, 2] and frame.loc[1, "articleType"] == "Tops"


def test_invalid_and_duplicate_ids_are_skipped_and_counted(tmp_path):
    path = write(tmp_path, (
        "1,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,a\n"
        "abc,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,b\n"
        "1,Women,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,c\n"
    ))
    frame, report = read_styles(path)
    assert frame["id"].tolist() == [1]
    assert frame.loc[0, "gender"] == "Men"  # the first of the duplicates is kept
    assert (report.invalid_ids, report.duplicate_ids) == (1, 1)


def test_missing_labels_are_na_and_counted(tmp_path):
    path = write(tmp_path, (
        "1,Men,Apparel,Topwear,Tshirts,,Summer,2012,,a\n"
        "2,Men,Apparel,Topwear,Tshirts,NA,Summer,2012,Casual,b\n"
        "3,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,c\n"
    ))
    frame, report = read_styles(path)
    assert frame["baseColour"].isna().tolist() == [True, True, False]
    assert report.missing_labels["baseColour"] == 2
    assert report.missing_labels["usage"] == 1
    assert report.missing_labels["gender"] == 0


def test_missing_file_and_missing_column_raise_clear_errors(tmp_path):
    with pytest.raises(StylesFileError, match="not found"):
        read_styles(tmp_path / "nope.csv")
    path = tmp_path / "styles.csv"
    path.write_text("id,gender\n1,Men\n")
    with pytest.raises(StylesFileError, match=r"lacks column\(s\) \['masterCategory'"):
        read_styles(path)
    path.write_text("id;gender;masterCategory\n1;Men;Apparel\n")   # a spreadsheet's locale separator
    with pytest.raises(StylesFileError, match="its fields are separated by ';', save it comma-separated"):
        read_styles(path)


def test_reads_the_real_full_styles_file():
    path = Path(__file__).resolve().parents[2] / "shared/data/fashion-product-images-subset/styles.csv"
    if not path.is_file():
        pytest.skip("shared subset not present")
    frame, report = read_styles(path)
    assert report.rows_read == 44446 and len(frame) == 44446
    assert report.missing_labels["usage"] > 0  # the real file has NA usage values
