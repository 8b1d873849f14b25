"""The error hierarchy. Every failure a user can cause or meet is one of these.

The CLI boundary (`gptcli.cli.app.main`) is the only place that turns them into
an exit code and one `Error: ...` line on stderr.
"""

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class GptcliError(Exception):
    """A failure with a message meant for the user (exit 1)."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} {self.hint}"


class UsageError(GptcliError):
    """The command line asked for something invalid (exit 2). Raised before work starts."""

    exit_code = EXIT_USAGE


class InputError(GptcliError):
    """The input data (prompt, file, stdin) is unreadable or malformed (exit 1)."""


class ModelLoadError(GptcliError):
    """A model could not be found, trusted or loaded (exit 1)."""


class Interrupted(GptcliError):
    """The user interrupted the work (exit 130); whatever was done is kept. Printed as a plain
    message, without `Error:`: the user asked for it."""

    exit_code = EXIT_INTERRUPTED
