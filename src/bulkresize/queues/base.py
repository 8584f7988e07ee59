"""The queue port: runs jobs somewhere, at least once."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from bulkresize.errors import ConfigurationError

__all__ = ["Job", "JobHandler", "Queue"]


@dataclass(frozen=True, slots=True)
class Job:
    """A unit of work. Plain data only, so any queue can carry it.

    Attributes:
        id: A stable ID. The same work always has the same ID, so a backend may drop a
            duplicate of a job that is still pending.
        kind: What to do, e.g. ``process_image`` or ``finalize_request``.
        payload: JSON-able arguments.
    """

    id: str
    kind: str
    payload: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The job as JSON-able data."""
        return {"id": self.id, "kind": self.kind, "payload": dict(self.payload)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        """Rebuild a job from ``to_dict()`` output."""
        return cls(id=str(data["id"]), kind=str(data["kind"]), payload=dict(data["payload"]))


#: Runs one job. It should not raise; if it does, the queue runs the job again later.
JobHandler = Callable[[Job], None]


class Queue(abc.ABC):
    """Runs jobs somewhere, at least once. Ids are ``str``, payloads plain data.

    A handler may see the same job more than once (after a crash or a retry), so handlers are
    idempotent. Backends raise ``bulkresize.errors.QueueError``, never their library's errors.
    """

    #: True when jobs run inside the process that calls ``start()`` (the embedded queue);
    #: False when separate ``bulkresize worker`` processes run them.
    in_process: ClassVar[bool] = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build the backend from its URL, e.g. ``local://?workers=8``."""
        # A backend that only takes ready clients is injected, never named by URL.
        raise ConfigurationError(
            f"{cls.__name__} cannot be built from a URL ({url!r}); pass an instance instead"
        )

    @abc.abstractmethod
    def enqueue(self, jobs: Sequence[Job]) -> None:
        """Queue jobs. When this returns, the jobs are accepted and will run at least once.

        Raises:
            QueueError: The backend did not accept the jobs.
        """

    @abc.abstractmethod
    def is_pending(self, job_id: str) -> bool:
        """Whether a job with this ID is queued or running (a sweeper re-queues when not)."""

    @abc.abstractmethod
    def start(self, handler: JobHandler) -> None:
        """Begin running jobs with ``handler`` in this process, in the background.

        Returns at once. ``close()`` stops.
        """

    @abc.abstractmethod
    def work(self, handler: JobHandler, *, burst: bool = False) -> None:
        """Run jobs with ``handler`` in the foreground.

        Args:
            handler: Runs one job.
            burst: Return once the queue is empty, instead of waiting for more jobs.
        """

    def close(self) -> None:  # noqa: B027  # lifecycle hooks are no-ops by default
        """Stop running jobs and release connections."""
