"""A lab of real test hosts on this machine: nginx + sshd + dockerd per host, Pebble, DNS and SMTP."""

from __future__ import annotations

from certfab.lab.control import (
    Lab,
    LabHost,
    LabInfo,
    clear_mails,
    default_repo_dir,
    down,
    host_exec,
    host_path,
    lab_info,
    mails,
    pebble_issued_count,
    pebble_log,
    reset_host,
    running,
    start_host,
    start_pebble,
    status,
    stop_host,
    stop_pebble,
    up,
)

__all__ = [
    "Lab",
    "LabHost",
    "LabInfo",
    "clear_mails",
    "default_repo_dir",
    "down",
    "host_exec",
    "host_path",
    "lab_info",
    "mails",
    "pebble_issued_count",
    "pebble_log",
    "reset_host",
    "running",
    "start_host",
    "start_pebble",
    "status",
    "stop_host",
    "stop_pebble",
    "up",
]
