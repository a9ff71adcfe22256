"""Errors that describe a user mistake rather than a bug.

The CLI prints these as one line (no traceback) and exits non-zero; everything else is a bug and keeps its
traceback.
"""


class VlpromptError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class ConfigError(VlpromptError, ValueError):
    """An argument or configuration value that cannot be used."""


class CheckpointMismatchError(VlpromptError):
    """A checkpoint that does not belong to the learner or CLIP it is loaded into."""


class TrainingDivergedError(VlpromptError):
    """Training produced a non-finite loss or parameter; nothing it learned is a result."""


class UnreadableImageError(ConfigError):
    """An image listed in a split file that is missing, damaged or in a pixel format that cannot be converted."""
