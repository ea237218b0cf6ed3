"""Errors of stain normalization: one-line messages, ValueError subclasses so batch
commands report them as bad input rather than crashes."""


class StainError(ValueError):
    """Base of every stain-normalization error."""


class StainFitError(StainError):
    """An image (slide sample or reference) cannot be fitted, e.g. it holds no tissue."""


class StainReferenceError(StainError):
    """The reference image is missing, unreadable or unusable."""
