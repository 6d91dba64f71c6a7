"""The worker's GPU options, applied while the pipeline loads: 8-bit T5, fused QKV projections,
the attention (SDPA) backend, CPU offload, and torch.compile per warm size.

Settings checks that need nothing but the settings live in worker/settings.py; the ones here
need what is known only at load: the device `auto` became, the model's size limits, its T5.
Each option and what it trades is in docs/performance.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0
from torch.nn.attention import SDPBackend, sdpa_kernel

from common.contract import ModelInfo
from common.settings import SettingsError, env_var
from worker.settings import WorkerSettings, parse_sizes

log = logging.getLogger("sd3serve.worker")

SDPA_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}

ShapeKey = tuple[tuple[int, ...], ...]


def check_device(settings: WorkerSettings, device: torch.device) -> None:
    """Refuse options the device cannot honour, now that `auto` is resolved."""
    if device.type == "cuda":
        return
    if needs_cuda := settings.needs_cuda():
        raise SettingsError(
            f"{' and '.join(needs_cuda)} as set need a CUDA device; this worker's device is "
            f"{device} ({env_var('torch_device')} is {settings.torch_device})"
        )


def t5_8bit(model: str, device: torch.device, dtype: torch.dtype) -> Any:
    """The model's T5 encoder with 8-bit weights (bitsandbytes' LLM.int8), loaded straight onto
    `device`: about half its bfloat16 memory (4.8 GB for T5-XXL instead of 9.5), and the
    bfloat16 copy is never whole on the GPU."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise SettingsError(
            f"{env_var('t5_8bit')} needs bitsandbytes: pip install 'sd3-serve[gpu]'"
        )
    from transformers import BitsAndBytesConfig, T5EncoderModel

    return T5EncoderModel.from_pretrained(
        model,
        subfolder="text_encoder_3",
        quantization_config=BitsAndBytesConfig(load_in_8bit=True),
        dtype=dtype,  # of the layers left unquantized (norms, embeddings)
        device_map={"": device},
    )


class FusedJointAttnProcessor:
    """diffusers' JointAttnProcessor2_0 on fused projections: one matrix product for the image
    tokens' query, key and value, and one for the text tokens'.

    diffusers' own FusedJointAttnProcessor2_0 skips the QK RMS norms SD3.5 has, and fails on
    SD3.5 Medium's image-only second attention, so it is not used.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        batch = hidden_states.shape[0]
        image_tokens = hidden_states.shape[1]
        query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        head_dim = key.shape[-1] // attn.heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = heads(query), heads(key), heads(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if encoder_hidden_states is not None:
            text = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
            text_query, text_key, text_value = (heads(t) for t in text)
            if attn.norm_added_q is not None:
                text_query = attn.norm_added_q(text_query)
            if attn.norm_added_k is not None:
                text_key = attn.norm_added_k(text_key)
            query = torch.cat([query, text_query], dim=2)
            key = torch.cat([key, text_key], dim=2)
            value = torch.cat([value, text_value], dim=2)

        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, dropout_p=0.0, is_causal=False
        )
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        image: torch.Tensor = attn.to_out[1](attn.to_out[0](out[:, :image_tokens]))
        if encoder_hidden_states is None:
            return image
        text_out = out[:, image_tokens:]
        if not attn.context_pre_only:
            text_out = attn.to_add_out(text_out)
        return image, text_out


def _fused_linear(*parts: torch.nn.Linear) -> torch.nn.Linear:
    weight = parts[0].weight
    out_features = sum(p.out_features for p in parts)
    bias = parts[0].bias is not None
    fused = torch.nn.Linear(
        parts[0].in_features, out_features, bias=bias, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        if bias:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
    return fused


def fuse_qkv(transformer: Any) -> int:
    """Fuse each attention's query, key and value projections into one; returns how many.

    The separate projections are deleted, unlike diffusers' fuse_qkv_projections, which keeps
    both (0.7 GB more for SD3 Medium, 2.7 GB for SD3.5 Large).
    """
    fused = 0
    for module in transformer.modules():
        if not isinstance(module, Attention):
            continue
        if not isinstance(module.processor, JointAttnProcessor2_0):
            raise SettingsError(
                f"{env_var('fuse_qkv')}: this transformer's attention uses "
                f"{type(module.processor).__name__}, which has no fused form here"
            )
        module.to_qkv = _fused_linear(module.to_q, module.to_k, module.to_v)
        del module.to_q, module.to_k, module.to_v
        if getattr(module, "add_q_proj", None) is not None:
            module.to_added_qkv = _fused_linear(
                module.add_q_proj, module.add_k_proj, module.add_v_proj
            )
            del module.add_q_proj, module.add_k_proj, module.add_v_proj
        module.set_processor(FusedJointAttnProcessor())
        fused += 1
    return fused


def place(pipe: Any, settings: WorkerSettings, device: torch.device) -> Any:
    """Put the pipeline on its device, or let diffusers move its parts there as they run."""
    if settings.cpu_offload == "model":
        # Each component (T5, the transformer, the VAE) moves to the GPU whole when it runs,
        # and back when the next one does: a component's worth of GPU memory at a time.
        pipe.enable_model_cpu_offload(device=device)
        return pipe
    if settings.cpu_offload == "sequential":
        # Layer by layer: the least GPU memory, and every step reloads every weight.
        pipe.enable_sequential_cpu_offload(device=device)
        return pipe
    return pipe.to(device)


class TransformerRouter:
    """Stands in for the transformer's forward: runs it under the configured SDPA backend and,
    with compilation on, sends calls of a shape compiled at warm-up to the compiled graph and
    any other shape to the eager forward.

    Compiled with dynamic=False, each warm shape gets a graph specialised to it (the fastest
    kernels); an unwarmed shape runs eager rather than recompile, so no request ever waits for
    a compilation (tens of seconds for SD3 on a GPU) and the process's graphs stay few.
    """

    def __init__(self, transformer: Any, settings: WorkerSettings) -> None:
        self.eager = transformer.forward
        self.backend = (
            SDPA_BACKENDS[settings.sdpa_backend] if settings.sdpa_backend != "auto" else None
        )
        self.compiled: Any = None
        if settings.compile:
            self.compiled = torch.compile(
                self.eager, dynamic=False, backend=settings.compile_backend
            )
        self.compiled_shapes: set[ShapeKey] = set()
        self.calls: Counter[str] = Counter()  # "compiled" and "eager" transformer calls
        self._warming = False
        transformer.forward = self

    @contextlib.contextmanager
    def warming(self) -> Iterator[None]:
        """Calls made inside are compiled for their shape (with compilation on)."""
        self._warming = True
        try:
            yield
        finally:
            self._warming = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with sdpa_kernel([self.backend]) if self.backend else contextlib.nullcontext():
            if self.compiled is None:
                return self.eager(*args, **kwargs)
            key = _shape_key(args, kwargs)
            if self._warming and key not in self.compiled_shapes:
                self.compiled_shapes.add(key)
                limit = torch._dynamo.config.recompile_limit
                torch._dynamo.config.recompile_limit = max(limit, len(self.compiled_shapes))
            if key in self.compiled_shapes:
                self.calls["compiled"] += 1
                return self.compiled(*args, **kwargs)
            self.calls["eager"] += 1
            return self.eager(*args, **kwargs)


def _shape_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ShapeKey:
    tensors = [*args, *(kwargs[k] for k in sorted(kwargs))]
    return tuple(tuple(t.shape) for t in tensors if isinstance(t, torch.Tensor))


def prepare(pipe: Any, settings: WorkerSettings, device: torch.device) -> TransformerRouter:
    """Apply the options to a freshly loaded pipeline (on the CPU) and place it."""
    if settings.fuse_qkv:
        # Before placing: the unfused copies never reach the GPU.
        log.info("fused QKV projections in %d attention layers", fuse_qkv(pipe.transformer))
    place(pipe, settings, device)
    return TransformerRouter(pipe.transformer, settings)


def warm_sizes(settings: WorkerSettings, info: ModelInfo) -> list[tuple[int, int]]:
    """The sizes to warm up (and compile) at, checked against the model's limits.

    Unset: the model's default size when compiling (the size most requests use), else its
    smallest (the cheapest generation that initialises everything).
    """
    if settings.warm_sizes is None:
        if settings.compile:
            return [(info.default_width, info.default_height)]
        return [(info.min_size, info.min_size)]
    sizes = parse_sizes(settings.warm_sizes)
    for width, height in sizes:
        if (refusal := info.size_refusal(width, height)) is not None:
            raise SettingsError(
                f"{env_var('warm_sizes')}: {width}x{height} is not a size {info.id} serves: "
                f"{refusal[1]}"
            )
    return sizes
