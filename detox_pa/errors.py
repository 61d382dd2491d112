"""User-facing errors: one line, naming the file / line / field and what was expected."""


class InputError(Exception):
    """Bad input. The CLI prints ``error: <message>`` on one line and exits with status 2."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
