"""The one-pass URL checks give the same answers as matching each value on its own."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkresize.validation import pandera as module

# Values like URLs, and their near misses: schemes, user info, ports, brackets, blanks.
_PIECES = st.sampled_from(
    [
        "http",
        "https",
        "HTTP",
        "file",
        "ftp",
        ":",
        "//",
        "/",
        "@",
        "[",
        "]",
        "::1",
        "?",
        "#",
        ",",
        " ",
        "\t",
        "a",
        "b.c",
        "80",
        "C:",
        "\\",
        "é",
        "\u2003",
        # Whitespace at the edges of what Arrow and Python agree on (str.strip, \s).
        "\x0b",
        "\x1c",
        "\x85",
        "\xa0",
        "\u3000",
        "HtTpS",
        "%",
        "~",
    ]
)
# URL-shaped values: a scheme, a separator, a host of awkward pieces and a tail.
_URLISH = st.tuples(
    st.sampled_from(["http", "https", "HTTP", "hTtPs", "ftp", "file", ""]),
    st.sampled_from(["://", ":/", ":", "//", ":///"]),
    st.lists(
        st.sampled_from(["a", "b.c", "@", ":", "[", "]", "::1", " ", "é", "%41", "~", "-", "\t"]),
        max_size=4,
    ).map("".join),
    st.sampled_from(["", "/", "/x y", "?q", "#f", ":80/", ":x"]),
).map("".join)
_VALUES = st.lists(st.lists(_PIECES, max_size=8).map("".join) | _URLISH, max_size=30)
_PATTERNS = {
    "host": module._HOST_IF_HTTP,
    "scheme": module._HTTP_SCHEME,
    "source": module._HTTP_OR_LOCAL,
    "no url": module._NO_URL,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(_PATTERNS))
@settings(max_examples=300)
@given(values=_VALUES)
def test_scan_agrees_with_matching_each_value(name: str, values: list[str]) -> None:
    pattern = _PATTERNS[name]
    series = pd.Series(values, dtype="str", index=range(10, 10 + len(values)))
    expected = [re.match(pattern, value) is not None for value in values]
    found = module._scan(series, pattern)
    assert found.tolist() == expected
    assert found.index.equals(series.index)


@settings(max_examples=300)
@given(values=_VALUES)
def test_the_first_pass_settles_only_what_the_exact_rules_accept(values: list[str]) -> None:
    """Whatever Arrow's RE2 patterns find, the exact patterns (Python's re) accept too."""
    found = pc.match_substring_regex(pa.array(values, type=pa.string()), module._RE2_PLAIN_URL)
    for value, plain in zip(values, found.to_pylist(), strict=True):
        if plain:
            for exact in (module._HOST_IF_HTTP, module._HTTP_SCHEME, module._HTTP_OR_LOCAL):
                assert re.match(exact, value), (value, exact)
    found = pc.match_substring_regex(pa.array(values, type=pa.string()), module._RE2_HAS_URL)
    for value, has_url in zip(values, found.to_pylist(), strict=True):
        if has_url:
            assert not re.match(module._NO_URL, value), value


def _url_checks(allow_local_files: bool, longest: int) -> dict[str, object]:
    validator = module.PanderaValidator(max_url_length=longest)
    column = validator.url_schema(allow_local_files=allow_local_files).columns[module.URLS]
    return {check.name: check._check_fn for check in column.checks}


@pytest.mark.parametrize("allow_local_files", [False, True])
@settings(max_examples=300)
@given(values=_VALUES, longest=st.integers(min_value=1, max_value=12))
def test_the_url_checks_answer_as_their_rules_say(
    allow_local_files: bool, values: list[str], longest: int
) -> None:
    """The shared one-scan shortcut changes no answer of the three URL checks."""
    series = pd.Series(values, dtype="str")
    checks = _url_checks(allow_local_files, longest)
    accepted = module._HTTP_OR_LOCAL if allow_local_files else module._HTTP_SCHEME
    source = module._SOURCE if allow_local_files else module._SCHEME
    expected = {
        source: [re.match(accepted, value) is not None for value in values],
        module._HOST: [re.match(module._HOST_IF_HTTP, value) is not None for value in values],
        module._LENGTH: [len(value) <= longest for value in values],
    }
    for name, answers in expected.items():
        assert checks[name](series).tolist() == answers, name  # type: ignore[operator]


@settings(max_examples=300)
@given(cells=st.lists(st.lists(_PIECES, max_size=8).map("".join), max_size=20))
def test_splitting_all_cells_at_once_equals_splitting_each(cells: list[str]) -> None:
    urls, counts = module._split_flat(pa.array(cells, type=pa.large_string()))
    per_cell = [module._split_urls(cell) for cell in cells]
    assert counts.tolist() == [len(urls) for urls in per_cell]
    assert urls.to_pylist() == [url for each in per_cell for url in each]


@settings(max_examples=300)
@given(cells=st.lists(st.lists(_PIECES, max_size=8).map("".join), max_size=20))
def test_the_row_frame_trims_as_str_strip_does(cells: list[str]) -> None:
    """Arrow trims and blanks cells exactly as Python would: blank cells become missing."""
    header = module._Header(["S. No.", "Product Name", "Input Image Urls"], module.DEFAULT_ALIASES)
    records = [(str(n), cell, cell) for n, cell in enumerate(cells, start=1)]
    numbers = np.arange(1, len(cells) + 1)
    frame = module._row_frame(header, records, numbers)
    expected = [cell.strip() or None for cell in cells]
    found = [None if pd.isna(value) else value for value in frame[module.URLS]]
    assert found == expected
    assert str(frame[module.URLS].dtype) == "str"


@settings(max_examples=300)
@given(cells=st.lists(st.lists(_PIECES, max_size=8).map("".join), max_size=20))
def test_the_row_checks_answer_as_their_rules_say(cells: list[str]) -> None:
    """The vectorised first pass of the URL-count checks changes no answer."""
    validator = module.PanderaValidator(max_urls_per_row=2)
    column = validator.row_schema().columns[module.URLS]
    checks = {check.name: check._check_fn for check in column.checks}
    series = pd.Series([cell.strip() or None for cell in cells], dtype="str")
    counts = [len(module._split_urls(cell)) for cell in cells]
    blank = [not cell.strip() for cell in cells]
    assert checks[module._MIN_URLS](series).tolist() == [  # type: ignore[operator]
        b or c > 0 for b, c in zip(blank, counts, strict=True)
    ]
    assert checks[module._MAX_URLS](series).tolist() == [  # type: ignore[operator]
        b or c <= 2 for b, c in zip(blank, counts, strict=True)
    ]


def test_blank_cells_are_reported_once_beside_the_other_row_checks() -> None:
    """The row checks skip missing cells themselves (ignore_na=False), as pandera would."""
    validator = module.PanderaValidator(max_urls_per_row=2)
    data = (
        b"S. No.,Product Name,Input Image Urls\n1,A,\n"
        b'2,B,"https://a/1,https://a/2,https://a/3"\n3,C," , "\n4,D,https://a/4\n'
    )
    with pytest.raises(module.ValidationFailed) as caught:
        validator.validate(data)
    assert [(p.row, p.message) for p in caught.value.problems] == [
        (1, "no image URL"),
        (2, "has 3 image URLs; at most 2 are allowed"),
        (3, "no image URL"),
    ]
