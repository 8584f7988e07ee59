"""The repository conformance suite."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from bulkresize.errors import RepositoryError, RequestNotFound
from bulkresize.models import (
    Image,
    ImageOptions,
    ImageOutcome,
    ImageStatus,
    Request,
    RequestStatus,
    WebhookStatus,
)
from bulkresize.repositories.base import Repository, WebhookOutbox

__all__ = ["RepositoryContract", "WebhookOutboxContract", "make_request"]

DONE = ImageOutcome(ImageStatus.DONE, output_key="k", bytes_in=10, bytes_out=5)
FAILED = ImageOutcome(ImageStatus.FAILED, error="http_status", error_message="HTTP 404")


def make_request(rows: int = 2, per_row: int = 3, **fields: object) -> tuple[Request, list[Image]]:
    """A new pending request with ``rows × per_row`` pending images."""
    request_id = uuid.uuid4().hex
    now = datetime.now(UTC)
    images = [
        Image(
            request_id,
            row,
            position,
            f"https://img.example/{row}/{position}.jpg",
            f"https://img.example/{row}/{position}.jpg",
        )
        for row in range(1, rows + 1)
        for position in range(1, per_row + 1)
    ]
    request = Request(
        id=request_id,
        status=RequestStatus.PENDING,
        total_images=len(images),
        processed_images=0,
        failed_images=0,
        options=ImageOptions(quality=40, format="webp"),
        created_at=now,
        updated_at=now,
        callback_url=None,
        owner=None,
    )
    if fields:
        request = dataclasses.replace(request, **fields)  # type: ignore[arg-type]
    return request, images


class RepositoryContract:
    """Mix into a test class and provide the ``repository`` fixture (fresh and empty)."""

    @pytest.fixture
    def repository(self) -> Repository:
        """The backend under test. Override this fixture."""
        raise NotImplementedError("provide a `repository` fixture")

    @pytest.fixture
    def supports_concurrency(self) -> bool:
        """Set to False for a backend that is only used from one thread."""
        return True

    def test_add_then_get_returns_the_request(self, repository: Repository) -> None:
        request, images = make_request(callback_url="https://hooks.example/x", owner="o1")
        repository.add_request(request, images)
        stored = repository.get_request(request.id)
        assert stored.id == request.id
        assert stored.status is RequestStatus.PENDING
        assert (stored.total_images, stored.processed_images, stored.failed_images) == (6, 0, 0)
        assert stored.options == ImageOptions(quality=40, format="webp")
        assert stored.callback_url == "https://hooks.example/x"
        assert stored.owner == "o1"
        assert stored.created_at.tzinfo is not None
        assert abs((stored.created_at - request.created_at).total_seconds()) < 1

    def test_get_of_an_unknown_request_raises_request_not_found(
        self, repository: Repository
    ) -> None:
        with pytest.raises(RequestNotFound):
            repository.get_request("no-such-request")
        with pytest.raises(RequestNotFound):
            repository.list_images("no-such-request")

    def test_a_request_id_cannot_be_added_twice(self, repository: Repository) -> None:
        request, images = make_request()
        repository.add_request(request, images)
        with pytest.raises(RepositoryError):
            repository.add_request(request, images)

    def test_images_come_back_in_row_and_position_order(self, repository: Repository) -> None:
        request, images = make_request(rows=3, per_row=12)
        repository.add_request(request, list(reversed(images)))
        listed = repository.list_images(request.id)
        assert [(i.row, i.position) for i in listed] == [(i.row, i.position) for i in images]
        assert listed[0].input_url == images[0].input_url
        assert all(i.status is ImageStatus.PENDING for i in listed)

    def test_record_moves_a_pending_image_and_counts_it(self, repository: Repository) -> None:
        request, images = make_request()
        repository.add_request(request, images)
        updated = repository.record_image(request.id, 1, 2, DONE)
        assert updated is not None
        assert updated.status is RequestStatus.PROCESSING
        assert (updated.processed_images, updated.failed_images) == (1, 0)
        updated = repository.record_image(request.id, 2, 1, FAILED)
        assert updated is not None
        assert (updated.processed_images, updated.failed_images) == (2, 1)
        by_key = {(i.row, i.position): i for i in repository.list_images(request.id)}
        assert by_key[1, 2].status is ImageStatus.DONE
        assert (by_key[1, 2].output_key, by_key[1, 2].bytes_in, by_key[1, 2].bytes_out) == (
            "k",
            10,
            5,
        )
        assert by_key[2, 1].status is ImageStatus.FAILED
        assert (by_key[2, 1].error, by_key[2, 1].error_message) == ("http_status", "HTTP 404")
        pending = repository.list_images(request.id, status=ImageStatus.PENDING)
        assert len(pending) == 4

    def test_recording_the_same_image_twice_changes_nothing(self, repository: Repository) -> None:
        request, images = make_request()
        repository.add_request(request, images)
        assert repository.record_image(request.id, 1, 1, DONE) is not None
        assert repository.record_image(request.id, 1, 1, FAILED) is None
        stored = repository.get_request(request.id)
        assert (stored.processed_images, stored.failed_images) == (1, 0)
        assert repository.list_images(request.id)[0].status is ImageStatus.DONE

    def test_recording_an_unknown_image_raises(self, repository: Repository) -> None:
        request, images = make_request()
        repository.add_request(request, images)
        with pytest.raises(RequestNotFound):
            repository.record_image(request.id, 99, 1, DONE)

    def test_concurrent_records_count_exactly(
        self, repository: Repository, supports_concurrency: bool
    ) -> None:
        if not supports_concurrency:
            pytest.skip("backend is single-threaded")
        request, images = make_request(rows=10, per_row=10)
        repository.add_request(request, images)
        # Every image is recorded twice, concurrently: each must count once.
        work = [(i.row, i.position) for i in images] * 2

        def record(key: tuple[int, int]) -> bool:
            outcome = FAILED if key[1] % 5 == 0 else DONE
            return repository.record_image(request.id, key[0], key[1], outcome) is not None

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            moved = list(pool.map(record, work))
        assert sum(moved) == 100
        stored = repository.get_request(request.id)
        assert (stored.processed_images, stored.failed_images) == (100, 20)

    def test_a_batch_records_each_image_and_counts_each_request_exactly(
        self, repository: Repository
    ) -> None:
        first, first_images = make_request(rows=2, per_row=2)
        second, second_images = make_request(rows=1, per_row=3)
        repository.add_request(first, first_images)
        repository.add_request(second, second_images)
        repository.record_image(first.id, 1, 1, DONE)  # recorded before the batch
        results = repository.record_images(
            [
                (first.id, 1, 1, FAILED),  # already recorded: unchanged, not counted
                (first.id, 1, 2, FAILED),
                (second.id, 1, 1, DONE),
                (first.id, 2, 1, DONE),
                (second.id, 1, 2, FAILED),
                (first.id, 2, 1, FAILED),  # twice in one batch: only the first counts
            ]
        )
        assert [r is None for r in results] == [True, False, False, False, False, True]
        after_first = repository.get_request(first.id)
        after_second = repository.get_request(second.id)
        assert (after_first.processed_images, after_first.failed_images) == (3, 1)
        assert (after_second.processed_images, after_second.failed_images) == (2, 1)
        # Each result shows its request after that image was counted (or after the whole
        # batch); the last count seen for a request is its final one either way.
        latest: dict[str, int] = {}
        for result in results:
            if result is not None:
                latest[result.id] = max(latest.get(result.id, 0), result.processed_images)
        assert latest == {first.id: 3, second.id: 2}
        statuses = {(i.row, i.position): i.status for i in repository.list_images(first.id)}
        assert statuses[(1, 1)] is ImageStatus.DONE
        assert statuses[(2, 1)] is ImageStatus.DONE
        assert statuses[(2, 2)] is ImageStatus.PENDING

    def test_recording_moves_updated_at_forward(self, repository: Repository) -> None:
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        request, images = make_request(rows=1, per_row=3, created_at=an_hour_ago)
        request = dataclasses.replace(request, updated_at=an_hour_ago)
        repository.add_request(request, images)
        single = repository.record_image(request.id, 1, 1, DONE)
        assert single is not None
        assert single.updated_at > an_hour_ago + timedelta(minutes=59)
        before_batch = repository.get_request(request.id).updated_at
        time.sleep(0.01)  # the batch's clock reading must differ from the single one's
        batch = repository.record_images([(request.id, 1, 2, DONE), (request.id, 1, 3, FAILED)])
        stored = repository.get_request(request.id)
        assert stored.updated_at > before_batch
        # Each result is the request after its image (or after the whole batch) was counted.
        assert all(result is not None and result.updated_at > before_batch for result in batch)
        assert stored.created_at == an_hour_ago

    def test_a_batch_with_an_unknown_image_raises(self, repository: Repository) -> None:
        request, images = make_request(rows=1, per_row=2)
        repository.add_request(request, images)
        with pytest.raises(RequestNotFound):
            repository.record_images([(request.id, 1, 1, DONE), (request.id, 9, 9, DONE)])

    def test_concurrent_batches_count_exactly(
        self, repository: Repository, supports_concurrency: bool
    ) -> None:
        if not supports_concurrency:
            pytest.skip("backend is single-threaded")
        request, images = make_request(rows=10, per_row=10)
        repository.add_request(request, images)
        keys = [(i.row, i.position) for i in images]
        # Overlapping batches, concurrently: every image twice, in batches of 7.
        work = keys + keys[3:] + keys[:3]
        batches = [work[n : n + 7] for n in range(0, len(work), 7)]

        def record(batch: list[tuple[int, int]]) -> int:
            outcomes = [(request.id, r, p, FAILED if p % 5 == 0 else DONE) for r, p in batch]
            return sum(result is not None for result in repository.record_images(outcomes))

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            moved = sum(pool.map(record, batches))
        assert moved == 100
        stored = repository.get_request(request.id)
        assert (stored.processed_images, stored.failed_images) == (100, 20)

    def test_finalize_waits_for_every_image(self, repository: Repository) -> None:
        request, images = make_request(rows=1, per_row=2)
        repository.add_request(request, images)
        repository.record_image(request.id, 1, 1, DONE)
        assert not repository.finalize_request(request.id, RequestStatus.COMPLETED, "out.csv")
        assert repository.get_request(request.id).status is RequestStatus.PROCESSING

    def test_finalize_happens_exactly_once(self, repository: Repository) -> None:
        request, images = make_request(rows=1, per_row=2)
        repository.add_request(request, images)
        repository.record_image(request.id, 1, 1, DONE)
        repository.record_image(request.id, 1, 2, FAILED)
        assert repository.finalize_request(request.id, RequestStatus.COMPLETED, "r/out.csv")
        assert not repository.finalize_request(request.id, RequestStatus.FAILED, "other.csv")
        stored = repository.get_request(request.id)
        assert stored.status is RequestStatus.COMPLETED
        assert stored.output_key == "r/out.csv"
        assert stored.is_final

    def test_concurrent_finalizers_have_one_winner(
        self, repository: Repository, supports_concurrency: bool
    ) -> None:
        if not supports_concurrency:
            pytest.skip("backend is single-threaded")
        request, images = make_request(rows=1, per_row=1)
        repository.add_request(request, images)
        repository.record_image(request.id, 1, 1, DONE)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            wins = list(
                pool.map(
                    lambda _: repository.finalize_request(request.id, RequestStatus.COMPLETED, "o"),
                    range(16),
                )
            )
        assert wins.count(True) == 1

    def test_finalization_is_claimed_once_and_only_when_complete(
        self, repository: Repository
    ) -> None:
        request, images = make_request(rows=1, per_row=2)
        repository.add_request(request, images)
        repository.record_image(request.id, 1, 1, DONE)
        assert not repository.claim_finalization(request.id, lease=60)  # one still pending
        repository.record_image(request.id, 1, 2, DONE)
        assert repository.claim_finalization(request.id, lease=60)
        assert not repository.claim_finalization(request.id, lease=60)  # the claim is live
        repository.finalize_request(request.id, RequestStatus.COMPLETED, "o.csv")
        assert not repository.claim_finalization(request.id, lease=60)  # final now
        with pytest.raises(RequestNotFound):
            repository.claim_finalization("no-such-request", lease=60)

    def test_a_lapsed_finalization_claim_can_be_taken_over(self, repository: Repository) -> None:
        request, images = make_request(rows=1, per_row=1)
        repository.add_request(request, images)
        repository.record_image(request.id, 1, 1, DONE)
        assert repository.claim_finalization(request.id, lease=0.2)
        time.sleep(0.4)
        assert repository.claim_finalization(request.id, lease=60)

    def test_concurrent_finalization_claims_have_one_winner(
        self, repository: Repository, supports_concurrency: bool
    ) -> None:
        if not supports_concurrency:
            pytest.skip("backend is single-threaded")
        request, images = make_request(rows=1, per_row=1)
        repository.add_request(request, images)
        repository.record_image(request.id, 1, 1, DONE)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            wins = list(
                pool.map(lambda _: repository.claim_finalization(request.id, lease=60), range(16))
            )
        assert wins.count(True) == 1

    def test_unfinished_lists_only_requests_not_final(self, repository: Repository) -> None:
        open_request, open_images = make_request(rows=1, per_row=1)
        done_request, done_images = make_request(rows=1, per_row=1)
        repository.add_request(open_request, open_images)
        repository.add_request(done_request, done_images)
        repository.record_image(done_request.id, 1, 1, DONE)
        repository.finalize_request(done_request.id, RequestStatus.COMPLETED, "o")
        unfinished = {r.id for r in repository.list_unfinished()}
        assert open_request.id in unfinished
        assert done_request.id not in unfinished

    def test_final_status_cannot_be_pending(self, repository: Repository) -> None:
        request, images = make_request(rows=1, per_row=1)
        repository.add_request(request, images)
        with pytest.raises(ValueError, match="final"):
            repository.finalize_request(request.id, RequestStatus.PROCESSING, None)


class WebhookOutboxContract:
    """Mix into a test class and provide ``repository``, which is also a ``WebhookOutbox``."""

    @pytest.fixture
    def repository(self) -> Repository:
        """The backend under test. Override this fixture."""
        raise NotImplementedError("provide a `repository` fixture")

    def _finished(self, repository: Repository, *, callback: str | None) -> Request:
        request, images = make_request(rows=1, per_row=1, callback_url=callback)
        repository.add_request(request, images)
        repository.record_image(request.id, 1, 1, DONE)
        assert repository.finalize_request(request.id, RequestStatus.COMPLETED, "o.csv")
        return repository.get_request(request.id)

    @staticmethod
    def _outbox(repository: Repository) -> WebhookOutbox:
        assert isinstance(repository, WebhookOutbox)
        return repository

    def test_a_request_with_a_callback_has_a_pending_webhook(self, repository: Repository) -> None:
        request, images = make_request(rows=1, per_row=1, callback_url="https://h.example/x")
        repository.add_request(request, images)
        webhook = repository.get_request(request.id).webhook
        assert webhook is not None
        assert (webhook.url, webhook.status, webhook.attempts) == (
            "https://h.example/x",
            WebhookStatus.PENDING,
            0,
        )
        assert webhook.to_dict() == {
            "url": "https://h.example/x",
            "status": "pending",
            "attempts": 0,
        }
        plain, plain_images = make_request(rows=1, per_row=1)
        repository.add_request(plain, plain_images)
        assert repository.get_request(plain.id).webhook is None

    def test_a_webhook_is_due_only_once_the_request_is_final(self, repository: Repository) -> None:
        outbox = self._outbox(repository)
        request, images = make_request(rows=1, per_row=2, callback_url="https://h.example/x")
        repository.add_request(request, images)
        repository.record_image(request.id, 1, 1, DONE)
        later = datetime.now(UTC) + timedelta(hours=1)
        assert request.id not in {r.id for r in outbox.claim_due_webhooks(later, lease=60)}
        repository.record_image(request.id, 1, 2, DONE)
        repository.finalize_request(request.id, RequestStatus.COMPLETED, "o.csv")
        claimed = outbox.claim_due_webhooks(later, lease=60)
        assert [r.id for r in claimed if r.id == request.id] == [request.id]

    def test_a_claimed_webhook_is_not_claimed_again_within_its_lease(
        self, repository: Repository
    ) -> None:
        outbox = self._outbox(repository)
        request = self._finished(repository, callback="https://h.example/x")
        now = datetime.now(UTC) + timedelta(seconds=1)
        assert request.id in {r.id for r in outbox.claim_due_webhooks(now, lease=30)}
        assert request.id not in {r.id for r in outbox.claim_due_webhooks(now, lease=30)}
        after_lease = now + timedelta(seconds=31)
        assert request.id in {r.id for r in outbox.claim_due_webhooks(after_lease, lease=30)}

    def test_concurrent_claims_have_one_winner(self, repository: Repository) -> None:
        outbox = self._outbox(repository)
        request = self._finished(repository, callback="https://h.example/x")
        now = datetime.now(UTC) + timedelta(seconds=1)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: outbox.claim_due_webhooks(now, lease=60), range(16)))
        winners = [r for batch in results for r in batch if r.id == request.id]
        assert len(winners) == 1

    def test_attempts_are_counted_until_delivered(self, repository: Repository) -> None:
        outbox = self._outbox(repository)
        request = self._finished(repository, callback="https://h.example/x")
        retry_at = datetime.now(UTC) + timedelta(seconds=5)
        failed_once = outbox.record_webhook_attempt(
            request.id, delivered=False, error="HTTP 500", next_attempt_at=retry_at
        )
        assert failed_once.webhook is not None
        assert (failed_once.webhook.status, failed_once.webhook.attempts) == (
            WebhookStatus.PENDING,
            1,
        )
        assert failed_once.webhook.last_error == "HTTP 500"
        next_at = failed_once.webhook.next_attempt_at
        assert next_at is not None
        assert abs((next_at - retry_at).total_seconds()) < 1
        delivered = outbox.record_webhook_attempt(request.id, delivered=True)
        assert delivered.webhook is not None
        assert (delivered.webhook.status, delivered.webhook.attempts) == (
            WebhookStatus.DELIVERED,
            2,
        )
        far = datetime.now(UTC) + timedelta(days=1)
        assert request.id not in {r.id for r in outbox.claim_due_webhooks(far, lease=1)}
        # Once delivery has ended, a stray attempt changes nothing.
        again = outbox.record_webhook_attempt(request.id, delivered=False, error="late")
        assert again.webhook is not None
        assert (again.webhook.status, again.webhook.attempts) == (WebhookStatus.DELIVERED, 2)

    def test_giving_up_marks_the_webhook_failed(self, repository: Repository) -> None:
        outbox = self._outbox(repository)
        request = self._finished(repository, callback="https://h.example/x")
        gave_up = outbox.record_webhook_attempt(request.id, delivered=False, error="HTTP 410")
        assert gave_up.webhook is not None
        assert gave_up.webhook.status is WebhookStatus.FAILED
        assert gave_up.webhook.last_error == "HTTP 410"

    def test_requests_without_a_callback_are_never_claimed(self, repository: Repository) -> None:
        outbox = self._outbox(repository)
        request = self._finished(repository, callback=None)
        far = datetime.now(UTC) + timedelta(days=1)
        assert request.id not in {r.id for r in outbox.claim_due_webhooks(far, lease=1)}
