"""The one exception type for mistakes a user can fix (bad paths, configs, files)."""


class ConfigError(ValueError):
    """A user input is wrong; the message names it and says what to do.

    The CLI prints it as one line and exits with status 2, without a traceback.
    """
