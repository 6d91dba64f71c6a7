from enum import StrEnum


class WebhookRequestEventsItem(StrEnum):
    CANCELED = "canceled"
    FAILED = "failed"
    RUNNING = "running"
    SUCCEEDED = "succeeded"

    def __str__(self) -> str:
        return str(self.value)
