"""The one exception type for mistakes a user can make and fix.

A `UserError` carries a one-line message that says what is wrong, where (file:line,
field) and what to do. The CLI prints it without a traceback and exits with
`exit_code`; anything else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: bad data, a missing model, a wrong option."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
