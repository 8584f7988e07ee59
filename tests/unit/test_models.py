from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkresize.errors import InvalidOption, ValidationFailed
from bulkresize.models import Catalogue, CatalogueRow, ImageOptions, ValidationProblem


@pytest.mark.parametrize(
    "overrides",
    [
        {"quality": 0},
        {"quality": 96},
        {"quality": "abc"},
        {"quality": True},
        {"format": "gif"},
        {"max_width": 0},
        {"max_height": "-3"},
        {"colour": "red"},
    ],
)
def test_bad_options_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(InvalidOption):
        ImageOptions().with_overrides(overrides)


def test_overrides_parse_strings_and_skip_blanks() -> None:
    options = ImageOptions().with_overrides(
        {"quality": " 80 ", "format": "PNG", "max_width": "", "max_height": None}
    )
    assert options == ImageOptions(quality=80, format="png")


@given(
    st.integers(1, 95),
    st.sampled_from(["jpeg", "webp", "png", "keep"]),
    st.none() | st.integers(1, 10_000),
    st.none() | st.integers(1, 10_000),
)
def test_options_round_trip_through_plain_data(
    quality: int, fmt: str, width: int | None, height: int | None
) -> None:
    options = ImageOptions(quality, fmt, width, height)
    assert ImageOptions.from_dict(options.to_dict()) == options


_ANY_VALUE = (
    st.none()
    | st.booleans()
    | st.integers(-5, 200)
    | st.sampled_from(["jpeg", "JPEG", " png ", "gif", "", "50", "x"])
)
_SIZE = st.none() | st.integers(-1, 5000) | st.sampled_from(["", "7", True])
_OPTION_DATA = st.fixed_dictionaries(  # all four fields, as to_dict() gives them, or nearly
    {
        "quality": st.integers(-1, 100) | st.sampled_from(["50", True]),
        "format": st.sampled_from(["jpeg", "JPEG", " png", "webp", "keep", "gif", ""]),
        "max_width": _SIZE,
        "max_height": _SIZE,
    }
) | st.dictionaries(
    st.sampled_from(["quality", "format", "max_width", "max_height", "colour"]), _ANY_VALUE
)


@given(_OPTION_DATA)
def test_options_from_data_read_like_overrides_of_the_defaults(data: dict[str, object]) -> None:
    """from_dict()'s fast path for to_dict() output changes nothing, errors included."""
    try:
        expected: ImageOptions | str = ImageOptions().with_overrides(data)
    except InvalidOption as exc:
        expected = str(exc)
    try:
        got: ImageOptions | str = ImageOptions.from_dict(data)
    except InvalidOption as exc:
        got = str(exc)
    assert got == expected


def test_options_as_data_name_every_field() -> None:
    assert ImageOptions().to_dict().keys() == {f.name for f in dataclasses.fields(ImageOptions)}
    assert ImageOptions(70, "png", 10, None).to_dict() == {
        "quality": 70,
        "format": "png",
        "max_width": 10,
        "max_height": None,
    }


def test_problem_text_names_row_and_column() -> None:
    problem = ValidationProblem(3, "Input Image Urls", "ftp://x", "'ftp://x' is not an http(s) URL")
    assert str(problem) == "row 3, column 'Input Image Urls': 'ftp://x' is not an http(s) URL"
    assert (
        str(ValidationProblem(None, None, None, "the file is empty")) == "file: the file is empty"
    )
    assert problem.to_dict() == {
        "row": 3,
        "column": "Input Image Urls",
        "value": "ftp://x",
        "message": "'ftp://x' is not an http(s) URL",
    }


def test_validation_failed_summarises_its_problems() -> None:
    problems = [
        ValidationProblem(1, "A", "", "a value is required"),
        ValidationProblem(2, "A", "", "a value is required"),
    ]
    error = ValidationFailed(problems)
    assert error.problems == problems
    assert str(error) == "row 1, column 'A': a value is required (and 1 more)"


def test_catalogue_round_trips() -> None:
    catalogue = Catalogue(
        ("S. No.", "Input Image Urls", "x"),
        1,
        (
            CatalogueRow(
                1,
                ("1", "https://a/1.jpg, https://a/2.jpg", "é,\n"),
                ("https://a/1.jpg", "https://a/2.jpg"),
            ),
        ),
    )
    assert Catalogue.from_dict(catalogue.to_dict()) == catalogue
    assert catalogue.total_images == 2


def test_catalogue_rows_are_built_as_they_are_read() -> None:
    from bulkresize.models import CatalogueRows

    rows = CatalogueRows([1, 3], [("a", "x,y"), ("b", "z")], ["x", "y", "z"], [2, 1])
    expected = (CatalogueRow(1, ("a", "x,y"), ("x", "y")), CatalogueRow(3, ("b", "z"), ("z",)))
    assert len(rows) == 2
    assert tuple(rows) == expected
    assert rows[0] == expected[0] and rows[-1] == expected[1]
    assert rows[::-1] == expected[::-1]
    assert rows == expected and expected == rows and rows == list(expected)
    assert rows != expected[:1] and rows != "ab"
    assert hash(rows) == hash(expected)
    assert repr(rows) == f"CatalogueRows({expected!r})"
    assert Catalogue(("S", "U"), 1, rows) == Catalogue(("S", "U"), 1, expected)
    assert Catalogue.from_dict(Catalogue(("S", "U"), 1, rows).to_dict()).rows == expected
    with pytest.raises(IndexError):
        rows[2]
    with pytest.raises(ValueError, match="add up to 2"):
        CatalogueRows([1], [("a",)], ["x", "y", "z"], [2])
    with pytest.raises(ValueError, match="one entry per row"):
        CatalogueRows([1, 2], [("a",)], ["x"], [1])
