"""`certfab` (and `python -m certfab`): certfab's tasks from any directory, with the options and help of `fab`.

    certfab -l
    certfab -H web1 bootstrap
    certfab deploy-all --limit europe

The task collection is the one `fab` and `inv` load from a checkout (`tasks/`, installed as
`certfab.tasks`), run by Fabric's
own program, so `-H`, `--prompt-for-sudo-password`, `--help TASK` and exit codes are those of `fab`.
"""

from __future__ import annotations

import sys

from fabric import Config, Executor
from fabric.main import Fab

from certfab import __version__

try:
    from certfab.tasks import ns  # installed: the wheel carries the collection inside the package
except ImportError:  # a checkout: the collection is the top-level tasks/ that fab and inv load
    from tasks import ns


def make_program() -> Fab:
    """Fabric's program bound to certfab's collection: no fabfile is searched for."""
    return Fab(name="certfab", binary="certfab", binary_names=["certfab"], version=__version__, namespace=ns,
               executor_class=Executor, config_class=Config)


def main(argv: list[str] | None = None) -> None:
    """Run one certfab command line (default: this process's arguments) and exit with its status."""
    make_program().run(["certfab", *argv] if argv is not None else sys.argv)


if __name__ == "__main__":
    main()
