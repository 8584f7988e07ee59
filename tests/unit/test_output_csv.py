from __future__ import annotations

import csv
import io

from hypothesis import given
from hypothesis import strategies as st

from bulkresize.models import Catalogue, CatalogueRow
from bulkresize.output_csv import neutralize_formula, render_output_csv


def catalogue(*rows: tuple[str, ...]) -> Catalogue:
    return Catalogue(
        ("S. No.", "Product Name", "Input Image Urls", "Extra"),
        2,
        tuple(
            CatalogueRow(n, row, tuple(u.strip() for u in row[2].split(",") if u.strip()))
            for n, row in enumerate(rows, start=1)
        ),
    )


def parse(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def test_outputs_replace_inputs_in_order_and_failures_keep_their_place() -> None:
    cat = catalogue(("1", "Shoe", "http://a/1, http://a/2,,http://a/3", 'x, "y"'))
    data = render_output_csv(cat, {(1, 1): "file:///o/1-1.jpg", (1, 3): "file:///o/1-3.jpg"})
    rows = parse(data)
    assert rows[0] == ["S. No.", "Product Name", "Input Image Urls", "Extra", "Output Image Urls"]
    assert rows[1] == [
        "1",
        "Shoe",
        "http://a/1, http://a/2,,http://a/3",
        'x, "y"',
        "file:///o/1-1.jpg,http://a/2,file:///o/1-3.jpg",
    ]


def test_formula_cells_are_neutralised_unless_turned_off() -> None:
    cat = catalogue(("1", '=HYPERLINK("x")', "http://a/1", "@SUM(A1)"))
    assert parse(render_output_csv(cat, {}))[1][1] == '\'=HYPERLINK("x")'
    assert parse(render_output_csv(cat, {}))[1][3] == "'@SUM(A1)"
    raw = parse(render_output_csv(cat, {}, neutralize_formulas=False))
    assert raw[1][1] == '=HYPERLINK("x")'


@given(st.text())
def test_neutralised_cells_never_start_with_a_formula_character(cell: str) -> None:
    result = neutralize_formula(cell)
    assert not result.startswith(("=", "+", "-", "@", "\t", "\r"))
    assert result.removeprefix("'") == cell or result == cell


@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=20),
        min_size=1,
        max_size=4,
    )
)
def test_any_extra_cell_survives_the_round_trip(extras: list[str]) -> None:
    cells = tuple(extras)
    cat = Catalogue(
        ("S. No.", "Input Image Urls", *[f"c{n}" for n in range(len(cells))]),
        1,
        (CatalogueRow(1, ("1", "http://a/1", *cells), ("http://a/1",)),),
    )
    rows = parse(render_output_csv(cat, {}, neutralize_formulas=False))
    assert rows[1][2:-1] == list(cells)
