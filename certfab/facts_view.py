"""Presenting facts to people (text) and programs (JSON)."""

from __future__ import annotations

import re
from typing import Any

from certfab.certs import parse_pem
from certfab.facts import HostFacts
from certfab.inventory import Host
from certfab.nginxconf import NginxConfError, parse_tree


def _runtime_answers(version: str) -> bool:
    """Whether the runtime's `version` answer is a version (not an error such as permission denied)."""
    return re.fullmatch(r"\d+\.\d+\S*", version.strip()) is not None


def facts_summary(facts: HostFacts, host: Host | None = None) -> dict[str, Any]:
    """A JSON-ready summary of a host's facts (no file contents, no private material)."""
    nginx: dict[str, Any] | None = None
    if facts.nginx is not None:
        blocks: list[dict[str, Any]] = []
        parse_error = None
        try:
            tree = parse_tree(
                {path: f.text for path, f in facts.nginx.files.items()},
                facts.nginx.conf_path,
                facts.nginx.prefix,
            )
            for block in tree.server_blocks:
                blocks.append(
                    {
                        "file": block.file,
                        "line": block.line,
                        "server_names": list(block.server_names),
                        "listens": [listen.raw for listen in block.listens],
                    }
                )
        except NginxConfError as exc:
            parse_error = str(exc)
        nginx = {
            "version": facts.nginx.version_text,
            "openssl": facts.nginx.openssl_text,
            "sni": facts.nginx.sni,
            "config_test": "ok" if facts.nginx.test_ok else facts.nginx.test_output,
            "files": sorted(facts.nginx.files),
            # Files nginx's includes name that certfab did not read, and why (key locations, non-files).
            "refused_files": dict(sorted(facts.nginx.refused_files.items())),
            "server_blocks": blocks,
        }
        if parse_error:
            nginx["parse_error"] = parse_error
    certificates = []
    for lineage in facts.lineages.values():
        try:
            info = parse_pem(lineage.cert_pem)
            certificates.append(
                {
                    "name": lineage.name,
                    "domains": list(info.names),
                    "not_after": info.not_after.isoformat(),
                    "issuer": info.issuer,
                    "serial": info.serial,
                }
            )
        except ValueError as exc:
            certificates.append({"name": lineage.name, "error": str(exc)})
    return {
        "host": facts.host,
        "hostname": facts.hostname,
        "os": facts.os_name,
        "nginx": nginx,
        "uid": facts.uid,
        "container_runtime": {
            "name": host.certbot.runtime if host is not None else None,
            "present": facts.runtime_present,
            "answers": facts.runtime_present and _runtime_answers(facts.runtime_version),
            "version": facts.runtime_version,
            "image": host.certbot.image if host is not None else None,
            "image_present": facts.image_present,
        },
        "certificates": certificates,
        "crontab": [line for line in facts.crontab.splitlines() if line.strip() and not line.startswith("#")],
        "cron_d": list(facts.cron_d),
        "competing_renewal": list(facts.competing_renewal),
        "certfab_files": sorted(facts.owned_files),
        "unfinished_run": bool(facts.journal.strip()),
        "renewal_status": facts.status.to_json() if facts.status is not None else None,
    }


def facts_text(summary: dict[str, Any]) -> str:
    """Human-readable rendering of facts_summary()."""
    lines = [f"{summary['host']} ({summary['hostname']}): {summary['os']}"]
    uid = summary.get("uid", 0)
    if uid > 0:
        lines.append(f"  commands run as uid {uid}, not root: nginx and the runtime may not answer; set sudo: true")
    nginx = summary["nginx"]
    if nginx is None:
        lines.append("  nginx: not installed")
    else:
        test_ok = nginx["config_test"] == "ok"
        lines.append(
            f"  nginx {nginx['version']} with {nginx['openssl'] or 'unknown TLS library'}, "
            f"SNI {'yes' if nginx['sni'] else 'NO'}, config test: {'ok' if test_ok else 'FAILED'}"
        )
        if not test_ok:
            lines.extend(f"      {line}" for line in nginx["config_test"].splitlines())
        for block in nginx["server_blocks"]:
            names = " ".join(block["server_names"]) or "(no server_name)"
            lines.append(f"    server {names}  listen {', '.join(block['listens'])}  [{block['file']}:{block['line']}]")
        if "parse_error" in nginx:
            lines.append(f"    parse error: {nginx['parse_error']}")
    runtime = summary["container_runtime"]
    if not runtime["present"]:
        state = "missing"
    elif runtime.get("answers", True):
        state = runtime["version"] or "present"
    else:
        state = f"present but not answering: {runtime['version'] or 'no output'}"
    name = f"{runtime['name']} " if runtime.get("name") else ""
    image = f"certbot image {runtime['image']}" if runtime.get("image") else "certbot image"
    lines.append(
        f"  container runtime: {name}{state}; {image} {'present' if runtime['image_present'] else 'missing'}"
    )
    if summary["certificates"]:
        for cert in summary["certificates"]:
            if "error" in cert:
                lines.append(f"  certificate {cert['name']}: unreadable ({cert['error']})")
            else:
                lines.append(f"  certificate {cert['name']}: {' '.join(cert['domains'])} until {cert['not_after']}")
    else:
        lines.append("  certificates: none")
    lines.append(f"  crontab: {len(summary['crontab'])} entries; /etc/cron.d: {' '.join(summary['cron_d']) or '-'}")
    for line in summary["crontab"]:
        lines.append(f"    {line}")
    if summary["competing_renewal"]:
        lines.append(f"  competing renewal jobs: {' '.join(summary['competing_renewal'])}")
    if summary["unfinished_run"]:
        lines.append("  an unfinished certfab run left a journal; the next bootstrap recovers it")
    return "\n".join(lines)
