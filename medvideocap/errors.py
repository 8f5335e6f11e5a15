"""The error family every layer shares: bad input data, as opposed to a bug in the code.

It lives below every subpackage (media, dataset, loading all raise it) so that none of them has to
import another's module for a base class.
"""

from __future__ import annotations


class DataError(Exception):
    """Bad input data (a record, a video, a shard member), as opposed to a bug in the code.

    The base of every error that names one clip's data as the cause; readers that may skip bad clips
    (``on_error="skip"``) catch this family and nothing wider. :class:`SchemaVersionError` is not in
    it: a dataset of another major version is unreadable as a whole, never skipped clip by clip."""
