"""TLS settings' allowed values: defined once, read by the inventory's validation and by tls."""

from __future__ import annotations

# Mozilla's server-side TLS profiles.
PROFILES = ("modern", "intermediate", "old")
# RFC 7919 finite-field groups certfab writes for DHE (the `old` profile only).
DHPARAM_BITS = (2048, 3072, 4096)
DEFAULT_DHPARAM_BITS = 2048
# hstspreload.org asks for at least one year.
HSTS_PRELOAD_MIN_AGE = 31536000
