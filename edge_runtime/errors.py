"""Exception types raised by the library; CLIs turn them into one-line messages."""


class MtadError(Exception):
    """Base class for errors a user can act on (bad input, bad bundle, bad config)."""


class AudioError(MtadError):
    """An audio file cannot be used: unreadable, empty, too short, non-finite samples."""


class DatasetError(MtadError):
    """A data root does not hold usable clips in the DCASE2020 Task 2 layout."""


class BundleError(MtadError):
    """An exported bundle is missing, tampered with, or does not match this runtime."""


class ConfigError(MtadError):
    """A configuration file or option is invalid."""
