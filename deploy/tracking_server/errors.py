"""The one error class of the commands: something the operator has to fix, printed as one line."""


class SetupError(Exception):
    """Something the operator has to fix; printed as one line."""
