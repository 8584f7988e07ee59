"""The repository port: the durable state of requests and images."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Self

from bulkresize.errors import ConfigurationError
from bulkresize.models import Image, ImageOutcome, ImageStatus, Request, RequestStatus

__all__ = ["Repository", "WebhookOutbox"]


class Repository(abc.ABC):
    """Keeps requests and their images. Every state change is atomic and moves only forward.

    An image moves ``pending`` → ``done`` | ``failed`` once; a request moves ``pending`` →
    ``processing`` → ``completed`` | ``failed`` once. A second attempt at the same move changes
    nothing, which is what makes jobs safe to run twice. Backends raise
    ``bulkresize.errors.RepositoryError`` and ``RequestNotFound``, never their library's errors.
    """

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Self:
        """Build the backend from a URL such as ``sqlite:///bulkresize.db``."""
        # A backend that only takes ready clients is injected, never named by URL.
        raise ConfigurationError(
            f"{cls.__name__} cannot be built from a URL ({url!r}); pass an instance instead"
        )

    @abc.abstractmethod
    def add_request(self, request: Request, images: Sequence[Image]) -> None:
        """Store a new request and all its images in one transaction.

        Raises:
            RepositoryError: The ID is taken, or the backend failed.
        """

    @abc.abstractmethod
    def get_request(self, request_id: str) -> Request:
        """Return the request.

        Raises:
            RequestNotFound: No request has this ID.
        """

    @abc.abstractmethod
    def list_images(
        self,
        request_id: str,
        *,
        status: ImageStatus | None = None,
    ) -> list[Image]:
        """Return the request's images ordered by row and position, optionally of one status.

        Raises:
            RequestNotFound: No request has this ID.
        """

    @abc.abstractmethod
    def record_image(
        self, request_id: str, row: int, position: int, outcome: ImageOutcome
    ) -> Request | None:
        """Move a pending image to ``outcome.status`` and count it, atomically.

        The request moves from ``pending`` to ``processing`` on its first counted image.

        Returns:
            The request as updated by this call, or ``None`` when the image had already left
            ``pending`` (nothing was changed or counted).

        Raises:
            RequestNotFound: No such image.
        """

    def record_images(
        self, records: Sequence[tuple[str, int, int, ImageOutcome]]
    ) -> list[Request | None]:
        """``record_image`` for each ``(request_id, row, position, outcome)``, in order.

        Each result is ``None`` where ``record_image`` would give ``None``, else the request
        as updated after that image was counted, or after the whole batch. Each image stays
        atomic with its count; a backend may write several in one transaction, so that a
        busy pipeline pays one commit per batch. The default calls ``record_image`` in turn.

        Raises:
            RequestNotFound: An image does not exist; then nothing of the batch may have been
                recorded, and the caller records the others one by one.
        """
        return [self.record_image(*record) for record in records]

    @abc.abstractmethod
    def claim_finalization(self, request_id: str, *, lease: float) -> bool:
        """Claim the right to finalize a request whose images are all final.

        Exactly one caller at a time wins, so exactly one writes the output CSV. The claim
        lapses after ``lease`` seconds, so a finalizer that died is replaced.

        Returns:
            True if this call holds the claim; False if the request is final, still has
            pending images, or another claim is live.
        """

    @abc.abstractmethod
    def finalize_request(
        self, request_id: str, status: RequestStatus, output_key: str | None
    ) -> bool:
        """Move a request whose images are all final to ``completed`` or ``failed``.

        Returns:
            True if this call made the move; False if the request was already final or still
            has pending images.
        """

    @abc.abstractmethod
    def list_unfinished(self, *, limit: int = 1000) -> list[Request]:
        """Return requests that are not final yet, oldest first (for resuming and sweeping)."""

    def close(self) -> None:  # noqa: B027  # lifecycle hooks are no-ops by default
        """Release connections."""


class WebhookOutbox(abc.ABC):
    """The durable outbox of webhook deliveries, kept beside the requests.

    ``Repository.finalize_request`` makes a request's webhook due in the same transaction as
    the final status move, so exactly one finalization schedules exactly one delivery, and a
    restart loses none. A repository that implements this port too can deliver webhooks.
    """

    @abc.abstractmethod
    def claim_due_webhooks(self, now: datetime, *, lease: float, limit: int = 100) -> list[Request]:
        """Claim final requests whose webhook is pending and due at ``now``.

        Each claimed request's next attempt moves to ``now + lease`` seconds, so no other
        process claims it meanwhile; if this process dies, it is due again after the lease.
        """

    @abc.abstractmethod
    def record_webhook_attempt(
        self,
        request_id: str,
        *,
        delivered: bool,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> Request:
        """Count one delivery attempt.

        Args:
            request_id: The request.
            delivered: The receiver accepted it: the webhook becomes ``delivered``.
            error: Why it failed, when it did.
            next_attempt_at: When to try again; ``None`` after a failure gives up (``failed``).

        Raises:
            RequestNotFound: No request has this ID.
        """
