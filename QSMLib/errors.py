"""Exceptions and warnings raised by QSMLib."""


class QSMInputError(ValueError):
    """Input that QSMLib cannot process.

    The message always says what was wrong and what to do about it. It is
    raised before any work is done or any output is written.
    """


class QSMCancelled(RuntimeError):
    """Raised by a stage when its ``cancel`` callback asks it to stop."""


class QSMWarning(UserWarning):
    """Something the user should know about, that does not stop processing."""
