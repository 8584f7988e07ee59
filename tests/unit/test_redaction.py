"""Passwords never survive redaction, however odd the URL around them."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from bulkresize.redaction import redact_url, scrub

# Anything a user might type, except the URL delimiters that end the authority, and `*`.
PASSWORDS = st.text(
    alphabet=st.sampled_from(string.ascii_letters + string.digits + "@:!$%&'()+,;=-._~ é"),
    min_size=3,
    max_size=20,
)
PORTS = st.sampled_from(["", ":6379", ":port", ":99999", ":"])


@given(password=PASSWORDS, port=PORTS, scheme=st.sampled_from(["redis", "postgresql+psycopg"]))
def test_the_password_never_survives(password: str, port: str, scheme: str) -> None:
    url = f"{scheme}://app:{password}@db.internal{port}/0"
    shown = redact_url(url)
    assert password not in shown
    assert shown == "<malformed URL>" or shown.startswith(f"{scheme}://app:")


def test_a_url_without_a_password_is_unchanged() -> None:
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("sqlite:///data/bulkresize.db") == "sqlite:///data/bulkresize.db"


def test_scrub_replaces_every_occurrence() -> None:
    assert scrub("pw-1 and pw-1", "pw-1") == "*** and ***"
    assert scrub("nothing", None) == "nothing"
