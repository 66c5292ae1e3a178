"""A bare SSH sweep as one process: the floor that any whole fleet command pays.

Connects to every target with plain paramiko (host keys checked strictly against one known_hosts
file, one key, no agent, no ssh_config), runs `true`, one thread per host. Nothing of certfab is
imported. Exits 1 if any host fails, printing one line per failure.

    python bench/sweep.py --known-hosts lab/known_hosts --key lab/id_ed25519 root@10.77.0.23:22 root@10.77.0.24:22
"""

from __future__ import annotations

import argparse
import sys
import threading

import paramiko


def sweep_one(target: str, known_hosts: str, key_file: str, timeout: float, failures: list[str]) -> None:
    """Connect to user@address:port, run `true`, close; a failure is appended as one line."""
    user, _, rest = target.rpartition("@")
    address, _, port = rest.rpartition(":")
    client = paramiko.SSHClient()
    try:
        client.load_host_keys(known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(address, port=int(port), username=user, key_filename=key_file, timeout=timeout,
                       allow_agent=False, look_for_keys=False)
        _, stdout, _ = client.exec_command("true", timeout=timeout)
        status = stdout.channel.recv_exit_status()
        if status:
            failures.append(f"{target}: `true` exited {status}")
    except Exception as exc:  # every failure is a line of the report, whatever its kind
        failures.append(f"{target}: {type(exc).__name__}: {exc}")
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--known-hosts", required=True, help="the only known_hosts file keys are checked against")
    parser.add_argument("--key", required=True, help="private key file")
    parser.add_argument("--timeout", type=float, default=10.0, help="connect and command timeout (default 10 s)")
    parser.add_argument("targets", nargs="+", help="user@address:port")
    args = parser.parse_args(argv)
    failures: list[str] = []
    threads = [threading.Thread(target=sweep_one, args=(t, args.known_hosts, args.key, args.timeout, failures))
               for t in args.targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
