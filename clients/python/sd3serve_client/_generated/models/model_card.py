from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Self, TypeVar, cast

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..types import UNSET, Unset

T = TypeVar("T", bound="ModelCard")


@_attrs_define
class ModelCard:
    """One served model: OpenAI's model object, plus this service's limits and availability.

    Attributes:
        created (int): Unix time a worker first published this model.
        default_guidance_scale (float):
        default_height (int):
        default_steps (int):
        default_width (int):
        device (str):
        dtype (str):
        id (str): The model's name (SD3SERVE_MODEL_NAME): what requests put in `model`.
        max_size (int):
        min_size (int):
        pipeline (str): The diffusers pipeline class.
        queue_depth (int): Jobs waiting in the model's queue.
        scheduler (str):
        scheduler_shift (float):
        size_multiple (int): Width and height must be multiples of this.
        source (str): What the workers loaded (SD3SERVE_MODEL): a folder or hub id.
        text_encoders (list[str]): Loaded text encoders (T5 may be dropped).
        workers_ready (int): Warm workers with a live heartbeat.
        max_num_images (int | Unset):  Default: 4.
        max_pixels (int | Unset): Most pixels one job may make, width × height × num_images (SD3SERVE_MAX_PIXELS of its
            workers); by default 4 images at the native size, default_width × default_height.
        max_steps (int | Unset):  Default: 100.
        object_ (Literal['model'] | Unset):  Default: 'model'.
        owned_by (str | Unset):  Default: 'sd3-serve'.
    """

    created: int
    default_guidance_scale: float
    default_height: int
    default_steps: int
    default_width: int
    device: str
    dtype: str
    id: str
    max_size: int
    min_size: int
    pipeline: str
    queue_depth: int
    scheduler: str
    scheduler_shift: float
    size_multiple: int
    source: str
    text_encoders: list[str]
    workers_ready: int
    max_num_images: int | Unset = 4
    max_pixels: int | Unset = UNSET
    max_steps: int | Unset = 100
    object_: Literal["model"] | Unset = "model"
    owned_by: str | Unset = "sd3-serve"
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        created = self.created

        default_guidance_scale = self.default_guidance_scale

        default_height = self.default_height

        default_steps = self.default_steps

        default_width = self.default_width

        device = self.device

        dtype = self.dtype

        id = self.id

        max_size = self.max_size

        min_size = self.min_size

        pipeline = self.pipeline

        queue_depth = self.queue_depth

        scheduler = self.scheduler

        scheduler_shift = self.scheduler_shift

        size_multiple = self.size_multiple

        source = self.source

        text_encoders = self.text_encoders

        workers_ready = self.workers_ready

        max_num_images = self.max_num_images

        max_pixels = self.max_pixels

        max_steps = self.max_steps

        object_ = self.object_

        owned_by = self.owned_by

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "created": created,
                "default_guidance_scale": default_guidance_scale,
                "default_height": default_height,
                "default_steps": default_steps,
                "default_width": default_width,
                "device": device,
                "dtype": dtype,
                "id": id,
                "max_size": max_size,
                "min_size": min_size,
                "pipeline": pipeline,
                "queue_depth": queue_depth,
                "scheduler": scheduler,
                "scheduler_shift": scheduler_shift,
                "size_multiple": size_multiple,
                "source": source,
                "text_encoders": text_encoders,
                "workers_ready": workers_ready,
            }
        )
        if max_num_images is not UNSET:
            field_dict["max_num_images"] = max_num_images
        if max_pixels is not UNSET:
            field_dict["max_pixels"] = max_pixels
        if max_steps is not UNSET:
            field_dict["max_steps"] = max_steps
        if object_ is not UNSET:
            field_dict["object"] = object_
        if owned_by is not UNSET:
            field_dict["owned_by"] = owned_by

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)
        created = d.pop("created")

        default_guidance_scale = d.pop("default_guidance_scale")

        default_height = d.pop("default_height")

        default_steps = d.pop("default_steps")

        default_width = d.pop("default_width")

        device = d.pop("device")

        dtype = d.pop("dtype")

        id = d.pop("id")

        max_size = d.pop("max_size")

        min_size = d.pop("min_size")

        pipeline = d.pop("pipeline")

        queue_depth = d.pop("queue_depth")

        scheduler = d.pop("scheduler")

        scheduler_shift = d.pop("scheduler_shift")

        size_multiple = d.pop("size_multiple")

        source = d.pop("source")

        text_encoders = cast(list[str], d.pop("text_encoders"))

        workers_ready = d.pop("workers_ready")

        max_num_images = d.pop("max_num_images", UNSET)

        max_pixels = d.pop("max_pixels", UNSET)

        max_steps = d.pop("max_steps", UNSET)

        object_ = cast(Literal["model"] | Unset, d.pop("object", UNSET))
        if object_ != "model" and not isinstance(object_, Unset):
            raise ValueError(f"object must match const 'model', got '{object_}'")

        owned_by = d.pop("owned_by", UNSET)

        model_card = cls(
            created=created,
            default_guidance_scale=default_guidance_scale,
            default_height=default_height,
            default_steps=default_steps,
            default_width=default_width,
            device=device,
            dtype=dtype,
            id=id,
            max_size=max_size,
            min_size=min_size,
            pipeline=pipeline,
            queue_depth=queue_depth,
            scheduler=scheduler,
            scheduler_shift=scheduler_shift,
            size_multiple=size_multiple,
            source=source,
            text_encoders=text_encoders,
            workers_ready=workers_ready,
            max_num_images=max_num_images,
            max_pixels=max_pixels,
            max_steps=max_steps,
            object_=object_,
            owned_by=owned_by,
        )

        model_card.additional_properties = d
        return model_card

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
