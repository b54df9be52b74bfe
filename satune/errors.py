"""The one base of every mistake a user can fix (a sweep file, a flag, a missing dataset, a server
that does not answer). Each layer raises its own subclass; the CLI catches this base once and
prints the message, a line per problem, with exit code 2 and no traceback."""


class UserError(Exception):
    """Something the user can fix; str(error) is what they read."""
