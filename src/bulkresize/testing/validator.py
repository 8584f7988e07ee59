"""The validator conformance suite."""

from __future__ import annotations

import random

import pytest

from bulkresize.errors import UploadTooLarge, ValidationFailed
from bulkresize.models import Catalogue
from bulkresize.validation.base import Validator

__all__ = ["ValidatorContract"]

GOOD = (
    b"S. No.,Product Name,Input Image Urls,Colour\r\n"
    b'1,Shoe,"https://img.example/a.jpg, https://img.example/b.jpg",red\r\n'
    b'2,"Bag, leather",https://img.example/c.jpg,"dark\nbrown"\r\n'
)

HOSTILE = [
    b"",
    b"\n\n\n",
    b"\xff\xfe\x00\x00",
    b"\x00" * 64,
    b"S. No.,Product Name,Input Image Urls\n",
    b'S. No.,Product Name,Input Image Urls\n1,A,"unterminated\n',
    b"a,b,c\n1,2,3\n",
    b"S. No.,Product Name,Input Image Urls\n1,A,https://x/a.jpg,extra,fields\n",
    "S. No.,Product Name,Input Image Urls\n1,Caf\u00e9,https://x/a.jpg\n".encode("latin-1"),
    b"\xef\xbb\xbf" + b"\r" * 100,
]


class ValidatorContract:
    """Mix into a test class and provide the ``validator`` fixture."""

    @pytest.fixture
    def validator(self) -> Validator:
        """The backend under test. Override this fixture."""
        raise NotImplementedError("provide a `validator` fixture")

    def test_a_good_file_gives_its_rows_cells_and_urls(self, validator: Validator) -> None:
        catalogue = validator.validate(GOOD)
        assert isinstance(catalogue, Catalogue)
        assert catalogue.header == ("S. No.", "Product Name", "Input Image Urls", "Colour")
        assert catalogue.url_column == 2
        assert [row.number for row in catalogue.rows] == [1, 2]
        assert catalogue.rows[0].urls == ("https://img.example/a.jpg", "https://img.example/b.jpg")
        assert catalogue.rows[1].cells == (
            "2",
            "Bag, leather",
            "https://img.example/c.jpg",
            "dark\nbrown",
        )
        assert catalogue.total_images == 3

    def test_a_bom_and_lf_line_ends_change_nothing(self, validator: Validator) -> None:
        variant = b"\xef\xbb\xbf" + GOOD.replace(b"\r\n", b"\n")
        assert validator.validate(variant).rows == validator.validate(GOOD).rows

    def test_every_problem_is_reported_with_row_and_column(self, validator: Validator) -> None:
        data = (
            b"S. No.,Product Name,Image URLs\n"
            b"1,A,https://img.example/a.jpg\n"
            b"2,B,ftp://x\n"
            b"3,C,javascript:alert(1)\n"
        )
        with pytest.raises(ValidationFailed) as raised:
            validator.validate(data)
        located = {(p.row, p.column) for p in raised.value.problems}
        assert (2, "Image URLs") in located
        assert (3, "Image URLs") in located
        assert all(p.message for p in raised.value.problems)

    def test_local_paths_need_permission(self, validator: Validator) -> None:
        data = b"S. No.,Product Name,Input Image Urls\n1,A,images/a.jpg\n"
        with pytest.raises(ValidationFailed):
            validator.validate(data)
        assert validator.validate(data, allow_local_files=True).rows[0].urls == ("images/a.jpg",)

    @pytest.mark.parametrize("data", HOSTILE)
    def test_hostile_input_only_ever_fails_validation(
        self, validator: Validator, data: bytes
    ) -> None:
        with pytest.raises(ValidationFailed) as raised:
            validator.validate(data)
        assert raised.value.problems

    def test_random_bytes_only_ever_fail_validation(self, validator: Validator) -> None:
        chooser = random.Random(20261129)
        for _ in range(200):
            data = bytes(chooser.randrange(256) for _ in range(chooser.randrange(1, 300)))
            try:
                validator.validate(data)
            except (ValidationFailed, UploadTooLarge):
                continue
