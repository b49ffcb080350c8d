"""One exception hierarchy: every error eegcache raises on purpose is an ``EegcacheError``, whose message says
what went wrong and what to do. The CLIs turn it into ``Error: <message>`` and exit 1; library users catch one
class. Each subclass also keeps the builtin base it had (``ValueError`` for bad input, ``RuntimeError`` for a
state of the world), so existing ``except ValueError`` code keeps working."""

from __future__ import annotations


class EegcacheError(Exception):
    """Base of every deliberate eegcache error."""


class InputError(EegcacheError, ValueError):
    """A bad file, flag, setting or query: the message names it and the problem."""


class StateError(EegcacheError, RuntimeError):
    """The cache, index or remote cannot be used as asked (newer schema, unwritable, missing)."""
