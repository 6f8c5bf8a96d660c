"""User-facing errors.

Every mistake a user can make (config, model files, datasets, hyper-parameters)
is raised as a ``KDError`` whose message is complete on its own: it names the
file, the key and the value, and says how to fix it. The state machine logs that
message and the test-bed shows it, so no traceback is needed to understand it.
"""


# A site prints a user mistake as one line `KD-ERROR <message as a JSON string>`: the engine
# reports only the exception's class name to the controller, the test-bed reads this line.
ERROR_MARKER = "KD-ERROR"


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its class name when it has none), for messages
    that quote a library's error without its whole text."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class KDError(Exception):
    """A problem the user can fix; the message says what and how."""


class ConfigError(KDError):
    """config.yml is missing, unreadable or has invalid keys or values."""


class ModelError(KDError):
    """A teacher/student model file or weights file cannot be used."""


class DataError(KDError):
    """A dataset file is missing, unreadable or inconsistent."""


class TrainingError(KDError):
    """Training cannot go on (for example the loss stopped being finite)."""


class FederationError(KDError):
    """Sites disagree (config, architecture) or sent unusable updates."""


class OutputError(KDError):
    """The site cannot write its outputs (a full disk, a read-only or unwritable output folder)."""
