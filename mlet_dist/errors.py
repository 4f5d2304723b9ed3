"""Errors a user can fix, shared by every layer: the CLIs print them as one ``error: ...`` line
and exit 2 (argparse's code for a usage error), with no traceback. Anything else is a bug and
keeps its traceback."""


class UserError(Exception):
    """Bad input or configuration, said in one line that names what to change."""


class DatasetError(UserError, ValueError):
    """A prepared dataset that does not match its meta.json or holds values training cannot use."""
