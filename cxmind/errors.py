"""The line between a user's mistake and a bug.

A :class:`UserError` is something the user can fix (a missing file, a mistyped recipe key, a model
id that cannot be resolved offline): the ``cxmind`` command prints its message as one line and exits
with status 2. Every other exception is a bug and keeps its traceback. ``UserError`` subclasses
``ValueError`` so that code calling the API and catching ``ValueError`` keeps working.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's command, files or settings; the message names the fix."""
