from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..types import UNSET, Unset

T = TypeVar("T", bound="Timings")


@_attrs_define
class Timings:
    """Seconds spent in each phase of a job; null until the phase has happened.

    Attributes:
        encode (float | None | Unset): Encoding and storing the images.
        inference (float | None | Unset): The pipeline call (denoise + decode).
        queue_wait (float | None | Unset): From acceptance to a worker start.
        total (float | None | Unset): From acceptance to the final state.
    """

    encode: float | None | Unset = UNSET
    inference: float | None | Unset = UNSET
    queue_wait: float | None | Unset = UNSET
    total: float | None | Unset = UNSET
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        encode: float | None | Unset
        if isinstance(self.encode, Unset):
            encode = UNSET
        else:
            encode = self.encode

        inference: float | None | Unset
        if isinstance(self.inference, Unset):
            inference = UNSET
        else:
            inference = self.inference

        queue_wait: float | None | Unset
        if isinstance(self.queue_wait, Unset):
            queue_wait = UNSET
        else:
            queue_wait = self.queue_wait

        total: float | None | Unset
        if isinstance(self.total, Unset):
            total = UNSET
        else:
            total = self.total

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update({})
        if encode is not UNSET:
            field_dict["encode"] = encode
        if inference is not UNSET:
            field_dict["inference"] = inference
        if queue_wait is not UNSET:
            field_dict["queue_wait"] = queue_wait
        if total is not UNSET:
            field_dict["total"] = total

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)

        def _parse_encode(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        encode = _parse_encode(d.pop("encode", UNSET))

        def _parse_inference(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        inference = _parse_inference(d.pop("inference", UNSET))

        def _parse_queue_wait(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        queue_wait = _parse_queue_wait(d.pop("queue_wait", UNSET))

        def _parse_total(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        total = _parse_total(d.pop("total", UNSET))

        timings = cls(
            encode=encode,
            inference=inference,
            queue_wait=queue_wait,
            total=total,
        )

        timings.additional_properties = d
        return timings

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
