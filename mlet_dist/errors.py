"""Errors a user can fix, shared by every layer: the CLIs print them as one ``error: ...`` line
and exit 2 (argparse's code for a usage error), with no traceback. Anything else is a bug and
keeps its traceback."""

from typing import NoReturn


class UserError(Exception):
    """Bad input or configuration, said in one line that names what to change."""


class DatasetError(UserError, ValueError):
    """A prepared dataset that does not match its meta.json or holds values training cannot use."""


USAGE_EXIT = 2  # argparse's code for a usage error; every CLI uses it for a mistake the user can fix


class UsageExit(SystemExit):
    """Exit status 2 that still reads as its message (str(), pytest.raises(match=...))."""

    def __init__(self, message: str) -> None:
        super().__init__(USAGE_EXIT)
        self.message = message

    def __str__(self) -> str:
        return self.message


def user_error_exit(message: object) -> NoReturn:
    """Print ``error: <message>`` (one line) to stderr and exit 2, the CLIs' shared ending."""
    import sys

    text = str(message)
    text = text if text.startswith("error:") else f"error: {text}"
    print(text, file=sys.stderr)
    raise UsageExit(text)
