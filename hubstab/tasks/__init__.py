"""Synthetic tasks for experiments and tests (the scale-detection task of Tomasini et al. 2022)."""

from hubstab.tasks.scale_detection import ScaleDetection, pixel_distance

__all__ = ["ScaleDetection", "pixel_distance"]
