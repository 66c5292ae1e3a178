"""Entry point for `fab`: the same tasks as `inv` (see tasks/)."""

from tasks import ns  # noqa: F401
