"""The wall between deciding and doing: modules that decide load no SSH or task library."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE_MODULES = (
    "certfab.inventory", "certfab.validate", "certfab.nginxconf", "certfab.includes", "certfab.tls",
    "certfab.renewal", "certfab.desired", "certfab.certs", "certfab.report", "certfab.expiry",
    "certfab.stamp", "certfab.facts", "certfab.facts_view", "certfab.recap", "certfab.protocol",
    "certfab.remote_scripts", "certfab.templating", "certfab.textsafe", "certfab.transaction",
    "certfab.issue", "certfab.outcome", "certfab.paths", "certfab.errors", "certfab.plan", "certfab.nginx",
    "certfab.renewal_status", "certfab.renewal_run", "certfab.tlsdefaults", "certfab.origin", "certfab.offboard", "certfab.lint",
    "certfab.renewalconf", "certfab.acmedir", "certfab.shared",
)
IO_LIBRARIES = ("fabric", "paramiko", "invoke")


@pytest.mark.parametrize("module", PURE_MODULES)
def test_a_pure_module_imports_no_io_library(module: str) -> None:
    probe = (f"import sys, {module}; "
             f"print(' '.join(m for m in {IO_LIBRARIES!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"importing {module} loads {result.stdout.strip()}"
