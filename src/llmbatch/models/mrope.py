"""M-RoPE positions of a prompt whose image placeholders were expanded by the processor.

Text tokens count up by one in all three rows. An image's tokens form its merged patch grid
``(t, h, w)``: each row holds the token's temporal, height or width index, offset by the position
where the image starts; the text after it resumes at that start plus the larger of the grid's
height and width. Positions therefore grow slower than token indices, and a generated token at
index ``t`` has position ``t + delta`` (``delta <= 0``).
"""

from __future__ import annotations

import torch


def _image_positions(start: int, grid: tuple[int, int, int]) -> torch.Tensor:
    t, h, w = grid
    index = torch.stack(
        torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    )
    return index.reshape(3, -1) + start


def mrope_positions(
    token_ids: list[int],
    image_grid_thw: torch.Tensor | None,
    *,
    image_token_id: int,
    video_token_id: int,
    spatial_merge_size: int,
) -> tuple[torch.Tensor, int]:
    """Positions ``[3, L]`` (int64, CPU) of a prompt and the delta of the tokens after it.

    ``image_grid_thw`` holds each image's (t, h, w) patch grid in prompt order; an image spans
    ``t * h * w / spatial_merge_size**2`` consecutive ``image_token_id`` tokens.
    """
    if video_token_id in token_ids:
        raise ValueError("the prompt holds video placeholder tokens; only images are supported")
    grids = [] if image_grid_thw is None else image_grid_thw.tolist()
    merged = [(t, h // spatial_merge_size, w // spatial_merge_size) for t, h, w in grids]
    is_image = torch.tensor(token_ids, dtype=torch.int64) == image_token_id
    expected = sum(t * h * w for t, h, w in merged)
    if int(is_image.sum()) != expected:
        raise ValueError(
            f"the prompt has {int(is_image.sum())} image placeholder tokens, but its "
            f"{len(grids)} image(s) need {expected}: expand each image's placeholder with the "
            "model's processor"
        )
    image_indices = torch.nonzero(is_image).flatten()
    parts = []
    position = index = 0
    images = iter(merged)
    while index < len(token_ids):
        if is_image[index]:
            t, h, w = next(images)
            if not is_image[index : index + t * h * w].all():
                raise ValueError(
                    f"the image placeholder run at token {index} is shorter than its image's "
                    f"{t * h * w} tokens"
                )
            parts.append(_image_positions(position, (t, h, w)))
            position += max(h, w)
            index += t * h * w
        else:
            later = image_indices[image_indices > index]
            end = int(later[0]) if len(later) else len(token_ids)
            parts.append(torch.arange(end - index).expand(3, -1) + position)
            position += end - index
            index = end
    if not parts:
        return torch.zeros(3, 0, dtype=torch.int64), 0
    positions = torch.cat(parts, dim=1)
    return positions, int(positions.max()) + 1 - len(token_ids)
