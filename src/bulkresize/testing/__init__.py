"""Conformance suites that every backend must pass, for built-ins and plug-ins alike.

Mix one into a test class and provide its fixture::

    from bulkresize.testing import StorageContract

    class TestMyStorage(StorageContract):
        @pytest.fixture
        def storage(self, tmp_path):
            return MyStorage(tmp_path)

The classes' names do not start with ``Test``, so pytest collects them only through your
subclass. A capability that not every backend has is a fixture flag that defaults to on.
"""

from bulkresize.testing.engine import EngineContract, require_corpus
from bulkresize.testing.queue import QueueContract
from bulkresize.testing.repository import RepositoryContract, WebhookOutboxContract
from bulkresize.testing.storage import StorageContract
from bulkresize.testing.validator import ValidatorContract

__all__ = [
    "EngineContract",
    "QueueContract",
    "RepositoryContract",
    "StorageContract",
    "ValidatorContract",
    "WebhookOutboxContract",
    "require_corpus",
]
