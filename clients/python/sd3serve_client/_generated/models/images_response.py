from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.images_response_quality_type_0 import ImagesResponseQualityType0
from ..models.output_format import OutputFormat
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.image_data import ImageData


T = TypeVar("T", bound="ImagesResponse")


@_attrs_define
class ImagesResponse:
    """OpenAI's answer, with the fields that are true here, and this service's job id.

    Attributes:
        created (int): Unix time the images were made.
        data (list[ImageData]):
        job_id (str): This service's job: GET /v1/jobs/{job_id}.
        output_format (OutputFormat):
        size (str): `WIDTHxHEIGHT` of the images.
        background (Literal['opaque'] | Unset):  Default: 'opaque'.
        quality (ImagesResponseQualityType0 | None | Unset): The tier run; absent when `steps` was given.
    """

    created: int
    data: list[ImageData]
    job_id: str
    output_format: OutputFormat
    size: str
    background: Literal["opaque"] | Unset = "opaque"
    quality: ImagesResponseQualityType0 | None | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        created = self.created

        data = []
        for data_item_data in self.data:
            data_item = data_item_data.to_dict()
            data.append(data_item)

        job_id = self.job_id

        output_format = self.output_format.value

        size = self.size

        background = self.background

        quality: None | str | Unset
        if isinstance(self.quality, Unset):
            quality = UNSET
        elif isinstance(self.quality, ImagesResponseQualityType0):
            quality = self.quality.value
        else:
            quality = self.quality

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "created": created,
                "data": data,
                "job_id": job_id,
                "output_format": output_format,
                "size": size,
            }
        )
        if background is not UNSET:
            field_dict["background"] = background
        if quality is not UNSET:
            field_dict["quality"] = quality

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.image_data import ImageData

        d = dict(src_dict)
        created = d.pop("created")

        data = []
        _data = d.pop("data")
        for data_item_data in _data:
            data_item = ImageData.from_dict(data_item_data)

            data.append(data_item)

        job_id = d.pop("job_id")

        output_format = OutputFormat(d.pop("output_format"))

        size = d.pop("size")

        background = cast(Literal["opaque"] | Unset, d.pop("background", UNSET))
        if background != "opaque" and not isinstance(background, Unset):
            raise ValueError(f"background must match const 'opaque', got '{background}'")

        def _parse_quality(data: object) -> ImagesResponseQualityType0 | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                quality_type_0 = ImagesResponseQualityType0(data)

                return quality_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(ImagesResponseQualityType0 | None | Unset, data)

        quality = _parse_quality(d.pop("quality", UNSET))

        images_response = cls(
            created=created,
            data=data,
            job_id=job_id,
            output_format=output_format,
            size=size,
            background=background,
            quality=quality,
        )

        images_response.additional_properties = d
        return images_response

    @property
    def additional_keys(self) -> list[str]:
        return list(self.additional_properties.keys())

    def __getitem__(self, key: str) -> Any:
        return self.additional_properties[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.additional_properties[key] = value

    def __delitem__(self, key: str) -> None:
        del self.additional_properties[key]

    def __contains__(self, key: str) -> bool:
        return key in self.additional_properties
