"""The output CSV (DESIGN §2): the input's columns and values, plus ``Output Image Urls``."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping

from bulkresize.models import Catalogue

__all__ = ["OUTPUT_COLUMN", "neutralize_formula", "render_output_csv"]

OUTPUT_COLUMN = "Output Image Urls"
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralize_formula(cell: str) -> str:
    """Prefix ``'`` to a cell that a spreadsheet would run as a formula."""
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


def render_output_csv(
    catalogue: Catalogue,
    output_urls: Mapping[tuple[int, int], str],
    *,
    neutralize_formulas: bool = True,
) -> bytes:
    """Write the output CSV as UTF-8 bytes, RFC 4180 (quoted where needed, CRLF line ends).

    Args:
        catalogue: The validated input.
        output_urls: ``(row, position) → output URL`` for each image that was processed;
            an image missing here keeps its input URL at its position.
        neutralize_formulas: Prefix ``'`` to cells starting with ``=``, ``+``, ``-``, ``@``,
            a tab or a carriage return.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")

    def clean(cells: list[str]) -> list[str]:
        return [neutralize_formula(cell) for cell in cells] if neutralize_formulas else cells

    writer.writerow(clean([*catalogue.header, OUTPUT_COLUMN]))
    for row in catalogue.rows:
        urls = [
            output_urls.get((row.number, position), url)
            for position, url in enumerate(row.urls, start=1)
        ]
        writer.writerow(clean([*row.cells, ",".join(urls)]))
    return buffer.getvalue().encode("utf-8")
