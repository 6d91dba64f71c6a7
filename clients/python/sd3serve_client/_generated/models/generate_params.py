from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

from ..models.output_format import OutputFormat

T = TypeVar("T", bound="GenerateParams")


@_attrs_define
class GenerateParams:
    """The fully resolved parameters a worker runs: every default filled in, seed included.

    Attributes:
        guidance_scale (float):
        height (int):
        model (str): The model that runs (or ran) the job.
        negative_prompt (str):
        num_images (int):
        output_format (OutputFormat):
        prompt (str):
        seed (int):
        steps (int):
        width (int):
    """

    guidance_scale: float
    height: int
    model: str
    negative_prompt: str
    num_images: int
    output_format: OutputFormat
    prompt: str
    seed: int
    steps: int
    width: int
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        guidance_scale = self.guidance_scale

        height = self.height

        model = self.model

        negative_prompt = self.negative_prompt

        num_images = self.num_images

        output_format = self.output_format.value

        prompt = self.prompt

        seed = self.seed

        steps = self.steps

        width = self.width

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "guidance_scale": guidance_scale,
                "height": height,
                "model": model,
                "negative_prompt": negative_prompt,
                "num_images": num_images,
                "output_format": output_format,
                "prompt": prompt,
                "seed": seed,
                "steps": steps,
                "width": width,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)
        guidance_scale = d.pop("guidance_scale")

        height = d.pop("height")

        model = d.pop("model")

        negative_prompt = d.pop("negative_prompt")

        num_images = d.pop("num_images")

        output_format = OutputFormat(d.pop("output_format"))

        prompt = d.pop("prompt")

        seed = d.pop("seed")

        steps = d.pop("steps")

        width = d.pop("width")

        generate_params = cls(
            guidance_scale=guidance_scale,
            height=height,
            model=model,
            negative_prompt=negative_prompt,
            num_images=num_images,
            output_format=output_format,
            prompt=prompt,
            seed=seed,
            steps=steps,
            width=width,
        )

        generate_params.additional_properties = d
        return generate_params

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
