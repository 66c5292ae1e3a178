"""One error hierarchy; every message is meant to be read by the operator as it is."""

from __future__ import annotations


class CertfabError(Exception):
    """Base of every error certfab reports to the user without a traceback."""

    exit_code = 1
    # What a pipeline had already done when it failed, for the recap (set by the pipeline).
    partial: object | None = None


class InventoryError(CertfabError):
    """The inventory file is missing or one of its values is invalid."""

    exit_code = 2


class HostKeyError(CertfabError):
    """A host's SSH key is unknown or has changed; nothing was run on it."""

    exit_code = 2


class ConnectError(CertfabError):
    """A host could not be reached or refused authentication."""


class RemoteError(CertfabError):
    """A command on a host failed in a way certfab did not expect."""


class LockedError(CertfabError):
    """Another certfab run holds the lock on a host."""


class PreflightError(CertfabError):
    """A host is not ready for bootstrap; nothing was changed."""


class ApplyError(CertfabError):
    """Applying a plan failed; the host was rolled back."""


class LabError(CertfabError):
    """The lab of test hosts could not be set up or torn down."""
