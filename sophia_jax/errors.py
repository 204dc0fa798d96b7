"""The one base class for mistakes a user can fix: bad config, missing file, unreadable data.

Every ``sophia-jax`` command reports a ``UserError`` as one line
(``sophia-jax <command>: error: <message>``) and exit code 2; anything else is a bug and keeps
its traceback. Library code raises a subclass whose message names the file, field or record.
"""

from __future__ import annotations


class UserError(Exception):
    """An input problem the user can fix; the message says what and where."""
