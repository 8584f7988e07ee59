from __future__ import annotations

from collections.abc import Iterator

import pytest

from bulkresize.errors import BackendNotFound
from bulkresize.queues import Queue
from bulkresize.queues.local import LocalQueue
from bulkresize.registry import create_backend
from bulkresize.testing import QueueContract


class TestLocalQueue(QueueContract):
    @pytest.fixture
    def queue(self) -> Iterator[Queue]:
        queue = LocalQueue(workers=4, retry_delay=0.01)
        yield queue
        queue.close()


def test_local_url_options() -> None:
    queue = create_backend("queue", "local://?workers=3", Queue)
    assert isinstance(queue, LocalQueue)
    assert queue._workers == 3
    queue.close()


def test_unknown_queue_scheme_names_what_is_available() -> None:
    with pytest.raises(
        BackendNotFound, match=r"no queue backend for 'amqp://'; available: .*local"
    ):
        create_backend("queue", "amqp://guest@localhost", Queue)
