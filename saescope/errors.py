"""The one exception type a user should ever see.

Every problem caused by input (a missing file, an unknown site, a corrupt shard, NaNs) is
raised as `SaescopeError` with a one-line message that names the problem and the fix; the CLI
prints that line and exits non-zero instead of showing a traceback.
"""


class SaescopeError(Exception):
    """A problem with the user's input or environment, explained in one line."""
