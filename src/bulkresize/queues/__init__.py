"""Queue backends. The port is :class:`Queue`; ``local://`` runs jobs on threads in-process."""

from bulkresize.queues.base import Job, JobHandler, Queue

__all__ = ["Job", "JobHandler", "Queue"]
