"""bulkresize-celery: a bulkresize queue that runs jobs as Celery tasks over Redis.

Select it with ``BULKRESIZE_QUEUE_URL=celery://127.0.0.1:6379/0`` and run ``bulkresize worker``
processes; see :class:`CeleryQueue` and the README.
"""

from bulkresize_celery.queue import KEY_PREFIX, TASK_NAME, BatchFailed, CeleryQueue

__all__ = ["KEY_PREFIX", "TASK_NAME", "BatchFailed", "CeleryQueue", "__version__"]

__version__ = "0.1.0"
