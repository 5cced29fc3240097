"""The one exception type for user mistakes: the CLI prints it as one line and exits with status 2."""


class UserError(Exception):
    """A mistake in the user's input (a missing file, an unknown name, an impossible size)."""
