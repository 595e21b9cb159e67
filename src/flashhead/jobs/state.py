"""Job states, the transitions they allow, and how each maps onto fal's wire format."""
from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"      # finished with a result
    FAILED = "FAILED"            # finished with an error (error, error_type set)
    CANCELLED = "CANCELLED"      # cancelled before or while running
    TIMED_OUT = "TIMED_OUT"      # start deadline (X-Fal-Request-Timeout) passed while queued

    def is_terminal(self) -> bool:
        return self not in (JobState.IN_QUEUE, JobState.IN_PROGRESS)

    def wire(self) -> str:
        """fal clients know only three statuses; every terminal state is COMPLETED (+ error)."""
        return self.value if not self.is_terminal() else JobState.COMPLETED.value

    def can_become(self, other: "JobState") -> bool:
        return other in _NEXT[self]


_NEXT = {
    JobState.IN_QUEUE: {JobState.IN_PROGRESS, JobState.CANCELLED, JobState.TIMED_OUT, JobState.FAILED},
    # IN_PROGRESS -> IN_QUEUE is crash recovery (see JobStore.recover)
    JobState.IN_PROGRESS: {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.IN_QUEUE},
    JobState.COMPLETED: set(), JobState.FAILED: set(), JobState.CANCELLED: set(), JobState.TIMED_OUT: set(),
}


class Priority(int, Enum):
    """Lower runs first. fal's header values: X-Fal-Queue-Priority: normal | low."""

    NORMAL = 0
    LOW = 1

    @classmethod
    def parse(cls, value: str | None) -> "Priority":
        if value is None or value == "":
            return cls.NORMAL
        try:
            return cls[value.strip().upper()]
        except KeyError:
            raise ValueError(f"X-Fal-Queue-Priority must be 'normal' or 'low', got {value!r}") from None
