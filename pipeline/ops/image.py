"""Image record operators: decode + validate, colour mode, resize.

Images travel between operators as uint8 arrays of shape (H, W, C); they are encoded to
PNG once, at publish time.
"""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.ops.base import Reject, RowOp
from pipeline.ops.registry import register


def to_hwc(array: np.ndarray) -> np.ndarray:
    return array[:, :, None] if array.ndim == 2 else array


def to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


class DecodeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_pixels: int = Field(default=50_000_000, ge=1)
    """Reject images larger than this (decompression-bomb guard)."""


@register
class Decode(RowOp):
    """Encoded bytes (PNG, JPEG, …) or a raw array → uint8 (H, W, C); undecodable → rejected."""

    name = "decode"
    Params = DecodeParams

    def apply(self, value) -> np.ndarray:
        if isinstance(value, np.ndarray):
            if value.dtype != np.uint8 or value.ndim not in (2, 3) or 0 in value.shape:
                raise Reject(f"not an image array (dtype {value.dtype}, shape {value.shape})")
            return to_hwc(value)
        if not value:
            raise Reject("empty file")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(value))
                if image.width * image.height > self.params.max_pixels:
                    raise Reject(f"{image.width}x{image.height} exceeds max_pixels={self.params.max_pixels}")
                image.load()
        except Reject:
            raise
        except Exception as err:  # PIL raises many types for corrupt data
            detail = str(err).splitlines()[0] if str(err) else ""
            raise Reject(f"undecodable image ({type(err).__name__}: {detail})") from None
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB" if image.mode in ("RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV") else "L")
        return to_hwc(np.asarray(image, dtype=np.uint8))


class ColorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["auto", "L", "RGB"] = "auto"
    """`L` (grey), `RGB`, or `auto`: the mode of the first decodable record."""


@register
class Color(RowOp):
    """Convert to one colour mode so every record has the same channel count."""

    name = "color"
    Params = ColorParams

    def apply(self, value: np.ndarray) -> np.ndarray:
        channels = 1 if self.params.mode == "L" else 3
        if value.shape[2] == channels:
            return value
        return to_hwc(np.asarray(to_pil(value).convert(self.params.mode), dtype=np.uint8))


class ResizeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int | Literal["auto"] = "auto"
    """Side of the square output; `auto`: the first record's shorter side rounded down to a
    multiple of 4 (the generators halve the resolution twice)."""
    fit: Literal["crop", "stretch"] = "crop"
    """`crop`: centre-crop to a square, then resize; `stretch`: resize ignoring the aspect ratio."""

    @field_validator("size")
    @classmethod
    def _multiple_of_four(cls, size: int | str) -> int | str:
        if isinstance(size, int) and (size < 4 or size % 4):
            raise ValueError(f"must be a multiple of 4 and at least 4, got {size}")
        return size


@register
class Resize(RowOp):
    """Bring every record to `size` × `size` pixels."""

    name = "resize"
    Params = ResizeParams

    def apply(self, value: np.ndarray) -> np.ndarray:
        size = self.params.size
        height, width = value.shape[:2]
        if (height, width) == (size, size):
            return value
        image = to_pil(value)
        if self.params.fit == "crop" and height != width:
            side = min(height, width)
            top, left = (height - side) // 2, (width - side) // 2
            image = image.crop((left, top, left + side, top + side))
        resized = image.resize((size, size), Image.Resampling.LANCZOS)
        return to_hwc(np.asarray(resized, dtype=np.uint8))
