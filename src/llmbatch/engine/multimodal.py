"""Images of a request, turned into model inputs by the model's own processor."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(slots=True, eq=False)
class MultiModalInputs:
    """The processed images of one request.

    `pixel_values` holds the patches of every image as the processor returns them, and
    `image_grid_thw` each image's (temporal, height, width) patch grid, one row per image in
    prompt order. `image_hashes` identify each image's pixels, so that the prefix cache only
    shares blocks whose images are equal as well as their tokens.
    """

    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor
    image_hashes: list[int]

    @property
    def num_images(self) -> int:
        return len(self.image_hashes)

    def to_record(self) -> dict[str, Any]:
        """The images as plain bytes and lists: what an Arrow column holds, and what goes to a
        replica process (tensors would each hold a shared-memory file descriptor there)."""
        pixels = self.pixel_values.contiguous()
        return {
            "pixel_values": pixels.view(torch.uint8).numpy().tobytes(),
            "pixel_shape": list(pixels.shape),
            "pixel_dtype": str(pixels.dtype).removeprefix("torch."),
            "image_grid_thw": self.image_grid_thw.tolist(),
            "image_hashes": list(self.image_hashes),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> MultiModalInputs | None:
        """The images `to_record` gave (or a row of such an Arrow column); None stays None."""
        if record is None:
            return None
        raw = torch.frombuffer(bytearray(record["pixel_values"]), dtype=torch.uint8)
        pixels = raw.view(getattr(torch, record["pixel_dtype"])).reshape(record["pixel_shape"])
        return cls(
            pixel_values=pixels,
            image_grid_thw=torch.tensor(record["image_grid_thw"], dtype=torch.int64),
            image_hashes=list(record["image_hashes"]),
        )


def image_hash(image: Any) -> int:
    """A stable 64-bit hash of a PIL image's mode, size and pixels."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    digest.update(image.tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


def process_images(processor: Any, prompt: str, images: list[Any]) -> tuple[list[int], Any]:
    """Token ids of `prompt` (a chat-templated text holding one image placeholder per image)
    with each placeholder expanded to its image's tokens, and the images' MultiModalInputs
    (None when there are no images)."""
    if not images:
        return list(processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]), None
    out = processor(text=[prompt], images=list(images), return_tensors="pt")
    mm = MultiModalInputs(
        pixel_values=out["pixel_values"],
        image_grid_thw=out["image_grid_thw"].to(torch.int64),
        image_hashes=[image_hash(image) for image in images],
    )
    return out["input_ids"][0].tolist(), mm


@dataclass(slots=True, eq=False)
class RequestImages:
    """A request's images as the engine tracks them: where their placeholder tokens sit in the
    prompt, the prompt's M-RoPE positions, and the encoder's output while the prompt is being
    prefilled (dropped once it is, and recomputed after a preemption)."""

    inputs: MultiModalInputs
    token_index: np.ndarray
    """Prompt positions of the image placeholder tokens, in order (row k of the embeddings)."""
    spans: list[tuple[int, int, int]]
    """Each image's [start, end) in the prompt and its hash."""
    positions: np.ndarray
    """[3, L] M-RoPE positions of the prompt."""
    delta: int
    """A generated token at index t has position t + delta."""
    embeds: torch.Tensor | None = None

    @classmethod
    def build(cls, model: Any, token_ids: list[int], inputs: MultiModalInputs) -> RequestImages:
        """Raises ValueError when the placeholders do not match the images."""
        ids = np.asarray(token_ids, dtype=np.int64)
        token_index = np.flatnonzero(ids == model.image_token_id)
        merge = model.spatial_merge_size**2
        counts = [int(n) // merge for n in inputs.image_grid_thw.prod(-1).tolist()]
        if len(token_index) != sum(counts):
            raise ValueError(
                f"the prompt holds {len(token_index)} image tokens but its {inputs.num_images} "
                f"image(s) need {sum(counts)}; expand each image placeholder with the model's "
                "processor (llmbatch.engine.multimodal.process_images)"
            )
        spans, offset = [], 0
        for count, image_hash_ in zip(counts, inputs.image_hashes):
            spans.append(
                (int(token_index[offset]), int(token_index[offset + count - 1]) + 1, image_hash_)
            )
            offset += count
        positions, delta = model.mrope_positions(token_ids, inputs.image_grid_thw)
        return cls(inputs, token_index, spans, positions.numpy(), int(delta))

    def hashes_in(self, start: int, end: int) -> tuple[int, ...]:
        """Hashes of the images with tokens in [start, end)."""
        return tuple(h for first, last, h in self.spans if first < end and last > start)


@dataclass(slots=True, eq=False)
class ImageChunk:
    """The image placeholder tokens of one prompt chunk in a step: flat step indices `at` take
    rows `rows` of the request's image embeddings."""

    at: np.ndarray
    images: RequestImages
    rows: np.ndarray
    completes_prompt: bool


def mrope_step_positions(
    requests: list[Any],
    starts: list[int],
    counts: list[int],
    positions: np.ndarray,
    offsets: np.ndarray,
) -> tuple[np.ndarray, list[ImageChunk]]:
    """An M-RoPE model's positions for a step whose requests run tokens [starts[i], + counts[i])
    from flat index offsets[i]: ``[T]`` (every section alike) unless a prompt with images is in
    the step, else ``[3, T]``; and the step's image chunks."""
    deltas = np.fromiter((r.images.delta if r.images else 0 for r in requests), np.int64)
    flat = positions + np.repeat(deltas, counts)
    in_prompt = [
        i
        for i, r in enumerate(requests)
        if r.images is not None and starts[i] < r.num_prompt_tokens
    ]
    if not in_prompt:
        return flat, []
    mrope = np.repeat(flat[None], 3, axis=0)
    chunks = []
    for i in in_prompt:
        images, start, offset = requests[i].images, starts[i], int(offsets[i])
        end = min(start + counts[i], requests[i].num_prompt_tokens)
        mrope[:, offset : offset + end - start] = images.positions[:, start:end]
        lo, hi = np.searchsorted(images.token_index, [start, end])
        completes = end == requests[i].num_prompt_tokens
        if hi > lo or (completes and images.embeds is not None):
            at = offset + images.token_index[lo:hi] - start
            chunks.append(ImageChunk(at, images, np.arange(lo, hi), completes))
    return mrope, chunks
