"""Counter-based random numbers keyed by (seed, stream, image index).

Every random quantity hubstab draws for an image (its diffeomorphism coefficients, its noise) is a pure
function of the run's seed, a stream name and the image's *global* index in the probe set. Nothing depends
on batch size, batch order, worker count, number of processes or device, and all draws of a batch are made
in one vectorised operation on the images' device.

The generator hashes 32-bit counters with the ``lowbias32`` integer mixer (C. Wellons) twice, once for the
key (seed, stream, index) and once per element, and turns pairs of 24-bit uniforms into normals with the
Box-Muller transform. Integer arithmetic is exact on every device, so CPU and GPU draw the same uniforms.
"""

from __future__ import annotations

import hashlib

import torch

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """``lowbias32`` on int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _mix32_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """:func:`_mix32` in place on ``x`` (``scratch``: a buffer of the same shape), without temporaries."""
    x ^= torch.bitwise_right_shift(x, 16, out=scratch)
    x.mul_(0x7FEB352D).bitwise_and_(_MASK32)
    x ^= torch.bitwise_right_shift(x, 15, out=scratch)
    x.mul_(0x846CA68B).bitwise_and_(_MASK32)
    x ^= torch.bitwise_right_shift(x, 16, out=scratch)
    return x


def stream_key(seed: int, stream: str) -> int:
    """A 32-bit key for a named stream of a seeded run (stable across Python versions and platforms)."""
    digest = hashlib.sha256(f"{int(seed)}:{stream}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _uniform_bits(key: int, indices: torch.Tensor, count: int, offset: int = 0) -> torch.Tensor:
    """(len(indices), count) int64 tensor of 32-bit hashes of (key, index, element counter)."""
    idx = indices.to(torch.int64).reshape(-1, 1) & _MASK32
    per_image = _mix32(_mix32(idx ^ key) ^ ((key * 0x9E3779B1) & _MASK32))
    counter = torch.arange(offset, offset + count, device=indices.device, dtype=torch.int64).reshape(1, -1)
    bits = per_image ^ _mix32(counter & _MASK32)
    # The (images, count) tensor is the big one (count = C * H * W for noise): mix it in place.
    return _mix32_(bits, torch.empty_like(bits))


def uniform(
    seed: int, stream: str, indices: torch.Tensor, count: int, *, dtype=torch.float32
) -> torch.Tensor:
    """Uniform numbers in (0, 1), shape (len(indices), count), a pure function of (seed, stream, index, j)."""
    bits = _uniform_bits(stream_key(seed, stream), indices, count)
    # 24 high bits, centred in their bin: never exactly 0 or 1.
    return ((bits >> 8).to(torch.float64) + 0.5).div_(2.0**24).to(dtype)


def normal(seed: int, stream: str, indices: torch.Tensor, count: int, *, dtype=torch.float32) -> torch.Tensor:
    """Standard normal numbers, shape (len(indices), count), a pure function of (seed, stream, index, j).

    Args:
        seed: the run's seed.
        stream: a name that separates independent uses (e.g. ``"diffeo/0"``, ``"noise/0"``).
        indices: global image indices, 1-D integer tensor; its device is the output's device.
        count: numbers per image.
        dtype: floating dtype of the result (computed in float32 at least).
    """
    half = (count + 1) // 2
    key = stream_key(seed, stream)
    bits = _uniform_bits(key, indices, 2 * half)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    # Box-Muller, computed in place where possible (same operations, same rounding, fewer temporaries).
    u = bits.bitwise_right_shift_(8).to(compute)
    del bits
    u.add_(0.5).div_(2.0**24)
    u1, u2 = u[:, :half], u[:, half:]
    radius = torch.log(u1).mul_(-2.0).sqrt_()
    angle = u2.mul_(2.0 * torch.pi)
    z = torch.empty_like(u)
    torch.mul(torch.cos(angle, out=z[:, :half]), radius, out=z[:, :half])
    torch.mul(torch.sin(angle, out=z[:, half:]), radius, out=z[:, half:])
    return z[:, :count].to(dtype)
