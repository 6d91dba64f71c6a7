from enum import StrEnum


class ImageGenerationRequestBackgroundType0(StrEnum):
    AUTO = "auto"
    OPAQUE = "opaque"

    def __str__(self) -> str:
        return str(self.value)
