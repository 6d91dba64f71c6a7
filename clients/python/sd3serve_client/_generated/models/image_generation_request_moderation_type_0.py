from enum import StrEnum


class ImageGenerationRequestModerationType0(StrEnum):
    AUTO = "auto"
    LOW = "low"

    def __str__(self) -> str:
        return str(self.value)
