from enum import StrEnum


class ImageGenerationRequestQualityType0(StrEnum):
    AUTO = "auto"
    HD = "hd"
    HIGH = "high"
    LOW = "low"
    MEDIUM = "medium"
    STANDARD = "standard"

    def __str__(self) -> str:
        return str(self.value)
