from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

from attrs import define as _attrs_define

from ..models.output_format import OutputFormat
from ..types import UNSET, Unset

if TYPE_CHECKING:
    from ..models.webhook_request import WebhookRequest


T = TypeVar("T", bound="GenerateRequest")


@_attrs_define
class GenerateRequest:
    """The body of POST /v1/generate. Fields left out take the served model's defaults.

    Attributes:
        prompt (str): What to draw: 1 to 2000 characters after trimming whitespace.
        guidance_scale (float | None | Unset): Classifier-free guidance scale, 0..20; 1 or less disables guidance.
            Default: the model's `default_guidance_scale`.
        height (int | None | Unset): Image height in pixels; same rules as `width`. Default: `default_height`.
        model (None | str | Unset): The model to run, an `id` from GET /v1/models. Default: the service's default model,
            or the only model it knows.
        negative_prompt (str | Unset): What to steer away from: at most 2000 characters. Default: ''.
        num_images (int | Unset): Images, 1..4. Default: 1.
        output_format (OutputFormat | Unset):
        seed (int | None | Unset): Random seed, 0..4294967295. Image k of the job uses seed + k, so any image can be
            reproduced alone. Left out: the service picks one and returns it.
        steps (int | None | Unset): Denoising steps, 1..100. Default: the model's `default_steps`.
        webhook (None | Unset | WebhookRequest): POST the job to `url` when it reaches one of `events`, signed with the
            service's webhook secret (Standard Webhooks); refused where the service has none.
        width (int | None | Unset): Image width in pixels, 8..4096, and further a multiple of the served model's
            `size_multiple` (16 for SD3 checkpoints) within its `min_size`..`max_size`: see GET /v1/models. Default: the
            model's `default_width`.
    """

    prompt: str
    guidance_scale: float | None | Unset = UNSET
    height: int | None | Unset = UNSET
    model: None | str | Unset = UNSET
    negative_prompt: str | Unset = ""
    num_images: int | Unset = 1
    output_format: OutputFormat | Unset = UNSET
    seed: int | None | Unset = UNSET
    steps: int | None | Unset = UNSET
    webhook: None | Unset | WebhookRequest = UNSET
    width: int | None | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        from ..models.webhook_request import WebhookRequest

        prompt = self.prompt

        guidance_scale: float | None | Unset
        if isinstance(self.guidance_scale, Unset):
            guidance_scale = UNSET
        else:
            guidance_scale = self.guidance_scale

        height: int | None | Unset
        if isinstance(self.height, Unset):
            height = UNSET
        else:
            height = self.height

        model: None | str | Unset
        if isinstance(self.model, Unset):
            model = UNSET
        else:
            model = self.model

        negative_prompt = self.negative_prompt

        num_images = self.num_images

        output_format: str | Unset = UNSET
        if not isinstance(self.output_format, Unset):
            output_format = self.output_format.value

        seed: int | None | Unset
        if isinstance(self.seed, Unset):
            seed = UNSET
        else:
            seed = self.seed

        steps: int | None | Unset
        if isinstance(self.steps, Unset):
            steps = UNSET
        else:
            steps = self.steps

        webhook: dict[str, Any] | None | Unset
        if isinstance(self.webhook, Unset):
            webhook = UNSET
        elif isinstance(self.webhook, WebhookRequest):
            webhook = self.webhook.to_dict()
        else:
            webhook = self.webhook

        width: int | None | Unset
        if isinstance(self.width, Unset):
            width = UNSET
        else:
            width = self.width

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "prompt": prompt,
            }
        )
        if guidance_scale is not UNSET:
            field_dict["guidance_scale"] = guidance_scale
        if height is not UNSET:
            field_dict["height"] = height
        if model is not UNSET:
            field_dict["model"] = model
        if negative_prompt is not UNSET:
            field_dict["negative_prompt"] = negative_prompt
        if num_images is not UNSET:
            field_dict["num_images"] = num_images
        if output_format is not UNSET:
            field_dict["output_format"] = output_format
        if seed is not UNSET:
            field_dict["seed"] = seed
        if steps is not UNSET:
            field_dict["steps"] = steps
        if webhook is not UNSET:
            field_dict["webhook"] = webhook
        if width is not UNSET:
            field_dict["width"] = width

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        from ..models.webhook_request import WebhookRequest

        d = dict(src_dict)
        prompt = d.pop("prompt")

        def _parse_guidance_scale(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        guidance_scale = _parse_guidance_scale(d.pop("guidance_scale", UNSET))

        def _parse_height(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        height = _parse_height(d.pop("height", UNSET))

        def _parse_model(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        model = _parse_model(d.pop("model", UNSET))

        negative_prompt = d.pop("negative_prompt", UNSET)

        num_images = d.pop("num_images", UNSET)

        _output_format = d.pop("output_format", UNSET)
        output_format: OutputFormat | Unset
        if isinstance(_output_format, Unset):
            output_format = UNSET
        else:
            output_format = OutputFormat(_output_format)

        def _parse_seed(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        seed = _parse_seed(d.pop("seed", UNSET))

        def _parse_steps(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        steps = _parse_steps(d.pop("steps", UNSET))

        def _parse_webhook(data: object) -> None | Unset | WebhookRequest:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, dict):
                    raise TypeError()
                webhook_type_0 = WebhookRequest.from_dict(data)

                return webhook_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | Unset | WebhookRequest, data)

        webhook = _parse_webhook(d.pop("webhook", UNSET))

        def _parse_width(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        width = _parse_width(d.pop("width", UNSET))

        generate_request = cls(
            prompt=prompt,
            guidance_scale=guidance_scale,
            height=height,
            model=model,
            negative_prompt=negative_prompt,
            num_images=num_images,
            output_format=output_format,
            seed=seed,
            steps=steps,
            webhook=webhook,
            width=width,
        )

        return generate_request
