"""The one-pass URL checks give the same answers as matching each value on its own."""

from __future__ import annotations

import re

import pandas as pd
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
    ]
)
_VALUES = st.lists(st.lists(_PIECES, max_size=8).map("".join), max_size=30)
_PATTERNS = {
    "host": module._HOST_IF_HTTP,
    "plain host": module._PLAIN_HOST,
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


def test_the_plain_host_pattern_accepts_only_what_the_full_one_accepts() -> None:
    for value in ["http://a/", "https://b.c:80/x", "http://u@h/", "http://[::1]/", "http:///x"]:
        if re.match(module._PLAIN_HOST, value):
            assert re.match(module._HOST_IF_HTTP, value), value


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
    urls, counts = module._split_flat(cells)
    per_cell = [module._split_urls(cell) for cell in cells]
    assert counts == [len(urls) for urls in per_cell]
    assert urls == [url for each in per_cell for url in each]


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
