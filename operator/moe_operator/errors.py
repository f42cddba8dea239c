"""Exception types for user mistakes: each carries a sentence a person can act on."""


class UserError(Exception):
    """Bad input from a person (spec, file, flag). The CLI prints it as one line and exits 2."""


class SpecInvalid(UserError):
    """A MoEDeployment that the schema accepts but that cannot be served (does not fit, no price, ...).

    ``reason`` is a CamelCase word for the condition's reason field.
    """

    def __init__(self, message: str, reason: str = "SpecInvalid"):
        super().__init__(message)
        self.reason = reason
