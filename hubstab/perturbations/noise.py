"""Gaussian noise rescaled per image to the norm of a given perturbation (Petrini et al., G_f)."""

from __future__ import annotations

import torch

from hubstab.perturbations import rng


def matched_noise(
    clean: torch.Tensor,
    perturbed: torch.Tensor,
    *,
    indices: torch.Tensor | None = None,
    seed: int = 0,
    stream: str = "noise",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gaussian noise eta with ||eta|| = ||perturbed - clean|| for every image (norm over C, H, W).

    The noise lives in the same pixel space as the images and is not clipped. With ``indices`` the
    direction of image ``i``'s noise is a pure function of ``(seed, stream, i)``.

    Returns:
        eta, same shape, dtype and device as ``clean``; add it to ``clean`` for the noisy input.
    """
    if clean.shape != perturbed.shape:
        raise ValueError(f"shapes differ: {tuple(clean.shape)} vs {tuple(perturbed.shape)}")
    b = clean.shape[0]
    if indices is not None:
        indices = torch.as_tensor(indices, device=clean.device)
        z = rng.normal(seed, stream, indices, clean[0].numel()).view_as(clean)
    else:
        z = torch.randn(
            clean.shape, generator=generator, device=generator.device if generator else clean.device
        )
        z = z.to(clean.device)
    target = (perturbed.float() - clean.float()).reshape(b, -1).norm(dim=1)
    norm = z.reshape(b, -1).norm(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return (z * (target / norm).view(b, *([1] * (clean.ndim - 1)))).to(clean.dtype)
