"""The one exception type for mistakes a user can make (bad file, missing data set, ...).

Scripts print its message as one line on stderr and exit non-zero; everything else is a
bug and keeps its traceback.
"""


class SppDetError(Exception):
    """A user-facing error. The message names the file (or setting) and what is wrong."""
