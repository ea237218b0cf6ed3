"""Errors of stain normalization: one-line messages, user errors (:mod:`pathology.errors`) so
batch commands report them as a bad slide or reference rather than as a bug."""

from ..errors import UserError


class StainError(UserError):
    """Base of every stain-normalization error."""


class StainFitError(StainError):
    """An image (slide sample or reference) cannot be fitted, e.g. it holds no tissue."""


class StainReferenceError(StainError):
    """The reference image is missing, unreadable or unusable."""
