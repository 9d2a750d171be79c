"""The library's own error types: each message names the cause and the fix."""


class FslError(Exception):
  """Base class for errors a user can fix without reading a traceback."""


class DataError(FslError):
  """A dataset file is missing, corrupt, or not the expected release."""


class EpisodeShapeError(FslError):
  """An episode shape that the data cannot supply (too many ways or shots)."""


class ConfigError(FslError):
  """A config value that is not allowed."""
