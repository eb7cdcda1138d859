"""The engine's errors whose one line already says what to do: the command line prints them as they are,
and the app shows them without a location or the advice to report a bug."""

from engine.data.load import DataError
from engine.models.find import ModelError
from engine.runs.protocol import RunError
from engine.training.config import ConfigError

EXPLAINED_ERRORS = (ConfigError, DataError, ModelError, RunError)
