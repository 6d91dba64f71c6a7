from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, TypeVar, cast

from attrs import define as _attrs_define

from ..models.image_generation_request_background_type_0 import (
    ImageGenerationRequestBackgroundType0,
)
from ..models.image_generation_request_moderation_type_0 import (
    ImageGenerationRequestModerationType0,
)
from ..models.image_generation_request_quality_type_0 import ImageGenerationRequestQualityType0
from ..models.image_generation_request_response_format_type_0 import (
    ImageGenerationRequestResponseFormatType0,
)
from ..models.image_generation_request_style_type_0 import ImageGenerationRequestStyleType0
from ..models.output_format import OutputFormat
from ..types import UNSET, Unset

T = TypeVar("T", bound="ImageGenerationRequest")


@_attrs_define
class ImageGenerationRequest:
    """OpenAI's image generation body, plus this service's own fields (the SDK's `extra_body`).

    Unknown fields are refused, as on /v1/generate; every field the `openai` SDK's
    `images.generate()` commonly sends is known, and those this service cannot honour are
    either accepted and ignored (documented on each) or refused where ignoring would lie.

        Attributes:
            prompt (str): What to draw: 1 to 2000 characters after trimming.
            background (ImageGenerationRequestBackgroundType0 | None | Unset): The images are always opaque; `transparent`
                is refused.
            guidance_scale (float | None | Unset): As on /v1/generate.
            model (None | str | Unset): An `id` from GET /v1/models. Default: as for /v1/generate.
            moderation (ImageGenerationRequestModerationType0 | None | Unset): Accepted and ignored: this service does not
                moderate.
            n (int | None | Unset): Images, 1..4; default 1.
            negative_prompt (str | Unset): As on /v1/generate. Default: ''.
            output_compression (int | None | Unset): Accepted and ignored: JPEG and WebP are encoded at a fixed quality.
            output_format (None | OutputFormat | Unset): png (default).
            quality (ImageGenerationRequestQualityType0 | None | Unset): Denoising steps as a share of the model's
                `default_steps`: low ¼, medium ½, high, auto (default), standard and hd all of them (at least 1). `steps`
                overrides.
            response_format (ImageGenerationRequestResponseFormatType0 | None | Unset): `b64_json` (default): the image
                bytes inline; `url`: the job's image link.
            safety_identifier (None | str | Unset): Accepted and ignored.
            seed (int | None | Unset): As on /v1/generate.
            size (None | str | Unset): `WIDTHxHEIGHT` within the model's limits (GET /v1/models), or `auto` (default): the
                model's default size.
            steps (int | None | Unset): As on /v1/generate; overrides `quality`.
            stream (bool | None | Unset): Only false: follow GET /v1/jobs/{id}/events for progress.
            style (ImageGenerationRequestStyleType0 | None | Unset): Accepted and ignored (DALL·E 3's prompt rewriting).
            user (None | str | Unset): Accepted and ignored.
    """

    prompt: str
    background: ImageGenerationRequestBackgroundType0 | None | Unset = UNSET
    guidance_scale: float | None | Unset = UNSET
    model: None | str | Unset = UNSET
    moderation: ImageGenerationRequestModerationType0 | None | Unset = UNSET
    n: int | None | Unset = UNSET
    negative_prompt: str | Unset = ""
    output_compression: int | None | Unset = UNSET
    output_format: None | OutputFormat | Unset = UNSET
    quality: ImageGenerationRequestQualityType0 | None | Unset = UNSET
    response_format: ImageGenerationRequestResponseFormatType0 | None | Unset = UNSET
    safety_identifier: None | str | Unset = UNSET
    seed: int | None | Unset = UNSET
    size: None | str | Unset = UNSET
    steps: int | None | Unset = UNSET
    stream: bool | None | Unset = UNSET
    style: ImageGenerationRequestStyleType0 | None | Unset = UNSET
    user: None | str | Unset = UNSET

    def to_dict(self) -> dict[str, Any]:
        prompt = self.prompt

        background: None | str | Unset
        if isinstance(self.background, Unset):
            background = UNSET
        elif isinstance(self.background, ImageGenerationRequestBackgroundType0):
            background = self.background.value
        else:
            background = self.background

        guidance_scale: float | None | Unset
        if isinstance(self.guidance_scale, Unset):
            guidance_scale = UNSET
        else:
            guidance_scale = self.guidance_scale

        model: None | str | Unset
        if isinstance(self.model, Unset):
            model = UNSET
        else:
            model = self.model

        moderation: None | str | Unset
        if isinstance(self.moderation, Unset):
            moderation = UNSET
        elif isinstance(self.moderation, ImageGenerationRequestModerationType0):
            moderation = self.moderation.value
        else:
            moderation = self.moderation

        n: int | None | Unset
        if isinstance(self.n, Unset):
            n = UNSET
        else:
            n = self.n

        negative_prompt = self.negative_prompt

        output_compression: int | None | Unset
        if isinstance(self.output_compression, Unset):
            output_compression = UNSET
        else:
            output_compression = self.output_compression

        output_format: None | str | Unset
        if isinstance(self.output_format, Unset):
            output_format = UNSET
        elif isinstance(self.output_format, OutputFormat):
            output_format = self.output_format.value
        else:
            output_format = self.output_format

        quality: None | str | Unset
        if isinstance(self.quality, Unset):
            quality = UNSET
        elif isinstance(self.quality, ImageGenerationRequestQualityType0):
            quality = self.quality.value
        else:
            quality = self.quality

        response_format: None | str | Unset
        if isinstance(self.response_format, Unset):
            response_format = UNSET
        elif isinstance(self.response_format, ImageGenerationRequestResponseFormatType0):
            response_format = self.response_format.value
        else:
            response_format = self.response_format

        safety_identifier: None | str | Unset
        if isinstance(self.safety_identifier, Unset):
            safety_identifier = UNSET
        else:
            safety_identifier = self.safety_identifier

        seed: int | None | Unset
        if isinstance(self.seed, Unset):
            seed = UNSET
        else:
            seed = self.seed

        size: None | str | Unset
        if isinstance(self.size, Unset):
            size = UNSET
        else:
            size = self.size

        steps: int | None | Unset
        if isinstance(self.steps, Unset):
            steps = UNSET
        else:
            steps = self.steps

        stream: bool | None | Unset
        if isinstance(self.stream, Unset):
            stream = UNSET
        else:
            stream = self.stream

        style: None | str | Unset
        if isinstance(self.style, Unset):
            style = UNSET
        elif isinstance(self.style, ImageGenerationRequestStyleType0):
            style = self.style.value
        else:
            style = self.style

        user: None | str | Unset
        if isinstance(self.user, Unset):
            user = UNSET
        else:
            user = self.user

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "prompt": prompt,
            }
        )
        if background is not UNSET:
            field_dict["background"] = background
        if guidance_scale is not UNSET:
            field_dict["guidance_scale"] = guidance_scale
        if model is not UNSET:
            field_dict["model"] = model
        if moderation is not UNSET:
            field_dict["moderation"] = moderation
        if n is not UNSET:
            field_dict["n"] = n
        if negative_prompt is not UNSET:
            field_dict["negative_prompt"] = negative_prompt
        if output_compression is not UNSET:
            field_dict["output_compression"] = output_compression
        if output_format is not UNSET:
            field_dict["output_format"] = output_format
        if quality is not UNSET:
            field_dict["quality"] = quality
        if response_format is not UNSET:
            field_dict["response_format"] = response_format
        if safety_identifier is not UNSET:
            field_dict["safety_identifier"] = safety_identifier
        if seed is not UNSET:
            field_dict["seed"] = seed
        if size is not UNSET:
            field_dict["size"] = size
        if steps is not UNSET:
            field_dict["steps"] = steps
        if stream is not UNSET:
            field_dict["stream"] = stream
        if style is not UNSET:
            field_dict["style"] = style
        if user is not UNSET:
            field_dict["user"] = user

        return field_dict

    @classmethod
    def from_dict(cls, src_dict: Mapping[str, Any]) -> Self:
        d = dict(src_dict)
        prompt = d.pop("prompt")

        def _parse_background(data: object) -> ImageGenerationRequestBackgroundType0 | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                background_type_0 = ImageGenerationRequestBackgroundType0(data)

                return background_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(ImageGenerationRequestBackgroundType0 | None | Unset, data)

        background = _parse_background(d.pop("background", UNSET))

        def _parse_guidance_scale(data: object) -> float | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(float | None | Unset, data)

        guidance_scale = _parse_guidance_scale(d.pop("guidance_scale", UNSET))

        def _parse_model(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        model = _parse_model(d.pop("model", UNSET))

        def _parse_moderation(data: object) -> ImageGenerationRequestModerationType0 | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                moderation_type_0 = ImageGenerationRequestModerationType0(data)

                return moderation_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(ImageGenerationRequestModerationType0 | None | Unset, data)

        moderation = _parse_moderation(d.pop("moderation", UNSET))

        def _parse_n(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        n = _parse_n(d.pop("n", UNSET))

        negative_prompt = d.pop("negative_prompt", UNSET)

        def _parse_output_compression(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        output_compression = _parse_output_compression(d.pop("output_compression", UNSET))

        def _parse_output_format(data: object) -> None | OutputFormat | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                output_format_type_0 = OutputFormat(data)

                return output_format_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(None | OutputFormat | Unset, data)

        output_format = _parse_output_format(d.pop("output_format", UNSET))

        def _parse_quality(data: object) -> ImageGenerationRequestQualityType0 | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                quality_type_0 = ImageGenerationRequestQualityType0(data)

                return quality_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(ImageGenerationRequestQualityType0 | None | Unset, data)

        quality = _parse_quality(d.pop("quality", UNSET))

        def _parse_response_format(
            data: object,
        ) -> ImageGenerationRequestResponseFormatType0 | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                response_format_type_0 = ImageGenerationRequestResponseFormatType0(data)

                return response_format_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(ImageGenerationRequestResponseFormatType0 | None | Unset, data)

        response_format = _parse_response_format(d.pop("response_format", UNSET))

        def _parse_safety_identifier(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        safety_identifier = _parse_safety_identifier(d.pop("safety_identifier", UNSET))

        def _parse_seed(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        seed = _parse_seed(d.pop("seed", UNSET))

        def _parse_size(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        size = _parse_size(d.pop("size", UNSET))

        def _parse_steps(data: object) -> int | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(int | None | Unset, data)

        steps = _parse_steps(d.pop("steps", UNSET))

        def _parse_stream(data: object) -> bool | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(bool | None | Unset, data)

        stream = _parse_stream(d.pop("stream", UNSET))

        def _parse_style(data: object) -> ImageGenerationRequestStyleType0 | None | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            try:
                if not isinstance(data, str):
                    raise TypeError()
                style_type_0 = ImageGenerationRequestStyleType0(data)

                return style_type_0
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(ImageGenerationRequestStyleType0 | None | Unset, data)

        style = _parse_style(d.pop("style", UNSET))

        def _parse_user(data: object) -> None | str | Unset:
            if data is None:
                return data
            if isinstance(data, Unset):
                return data
            return cast(None | str | Unset, data)

        user = _parse_user(d.pop("user", UNSET))

        image_generation_request = cls(
            prompt=prompt,
            background=background,
            guidance_scale=guidance_scale,
            model=model,
            moderation=moderation,
            n=n,
            negative_prompt=negative_prompt,
            output_compression=output_compression,
            output_format=output_format,
            quality=quality,
            response_format=response_format,
            safety_identifier=safety_identifier,
            seed=seed,
            size=size,
            steps=steps,
            stream=stream,
            style=style,
            user=user,
        )

        return image_generation_request
