"""The two kinds of failure the CLI distinguishes (SPEC exit codes)."""


class UserError(Exception):
    """Bad config, bad input or bad arguments: exit 2 with this one-line message."""


class RunFailure(Exception):
    """Something failed while running: exit 1, one line here, details in OUTPUT/logs/."""
