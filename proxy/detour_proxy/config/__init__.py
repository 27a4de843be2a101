"""The routing config: pydantic models (the one schema), duration strings, and key sources.

`schema` holds the models and loaders, `durations` the duration grammar shared with the CRD
generator, `credentials` how a `SecretSource` becomes a key that follows its file. Importing
this package pulls in pydantic and yaml only (the operator imports it too).
"""

from ._schema import *  # noqa: F403  (the public names are listed in _schema.__all__)
from ._schema import LATENCY_TOLERANCE_DEFAULT, NAME_PATTERN, __all__, check_latency_tolerance

__all__ = [*__all__, "LATENCY_TOLERANCE_DEFAULT", "NAME_PATTERN", "check_latency_tolerance"]
