"""Reading a host's state in one batched remote command, and parsing it into typed facts."""

from __future__ import annotations

import base64
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from certfab import tls
from certfab.errors import PreflightError
from certfab.inventory import Host
from certfab.paths import CRON_FILE, HOST_CONFIG_DIR, NGINX_CERTFAB_DIR, RENEW_SCRIPT, STATE_DIR, STATUS_FILE
from certfab.remote import Remote

MARK = "@@certfab"

# Files certfab owns outside nginx's own tree; their content is read back so plans can diff them.
OWNED_GLOBS = (
    f"{NGINX_CERTFAB_DIR}/*",
    "/etc/nginx/conf.d/certfab-*.conf",
    RENEW_SCRIPT,
    CRON_FILE,
    f"{HOST_CONFIG_DIR}/*",
)

# Certificates: public halves only (cert.pem and the lineage's renewal config, never privkey.pem).
CERTS_SECTION = (
    "S certs; for d in /etc/letsencrypt/live/*/; do [ -f \"${d}cert.pem\" ] || continue; "
    "n=${d%/}; n=${n##*/}; S cert \"$n\"; base64 -w0 \"${d}cert.pem\"; echo; "
    "S renewal-conf \"$n\"; cat \"/etc/letsencrypt/renewal/$n.conf\" 2>/dev/null; done"
)

_SECTION = re.compile(rf"^{MARK} ([a-z0-9-]+)(?: (.*))?@@$", re.MULTILINE)


def facts_script(host: Host, *, nginx: bool = True) -> str:
    """The shell script that prints every fact certfab needs, in marked sections.

    It reads only public material: configuration, certificates (cert.pem, never privkey.pem),
    renewal configs, crontabs and certfab's own state.
    """
    runtime = shlex.quote(host.certbot.runtime)
    image = shlex.quote(host.certbot.image)
    parts = [
        "LC_ALL=C; export LC_ALL",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH",
        f"S() {{ printf '\\n{MARK} %s@@\\n' \"$*\"; }}",
        "S os; cat /etc/os-release 2>/dev/null",
        "S hostname; { read -r h < /proc/sys/kernel/hostname && printf '%s\\n' \"$h\"; } 2>/dev/null || hostname",
        "S uid; id -u",
        "S systemd; [ -d /run/systemd/system ] && echo yes || echo no",
        "S tools; for t in curl wget python3 flock logger sendmail openssl crontab nginx docker podman; do "
        "command -v \"$t\" >/dev/null 2>&1 && echo \"$t\"; done",
        # certfab's own state: journal of an unfinished run, lock owner, renewal status
        # An open journal (or a staging area) means an earlier run was cut off mid-apply.
        f"S journal; for j in {STATE_DIR}/journal {STATE_DIR}/journal.staging; do "
        "[ -d \"$j\" ] && echo \"open $j\"; done; true",
        f"S status; cat {STATUS_FILE} 2>/dev/null",
        f"S runtime; if command -v {runtime} >/dev/null 2>&1; then echo present; "
        f"{runtime} version --format '{{{{.Server.Version}}}}' 2>&1 | head -n 3; echo \"exit=$?\"; "
        f"S image; {runtime} image inspect --format '{{{{.Id}}}}' {image} 2>/dev/null || echo missing; "
        "else echo missing; fi",
        CERTS_SECTION,
        "S crontab; crontab -l -u root 2>/dev/null; true",
        "S cron-d; ls -1 /etc/cron.d 2>/dev/null",
        "S competing; [ -e /etc/cron.d/certbot ] && echo /etc/cron.d/certbot; "
        "[ -d /run/systemd/system ] && systemctl is-enabled certbot.timer snap.certbot.renew.timer 2>/dev/null "
        "| grep -q '^enabled' && echo certbot.timer; true",
        "S owned; for f in " + " ".join(OWNED_GLOBS) + "; do [ -f \"$f\" ] || continue; "
        "S owned-file \"$f\"; base64 -w0 \"$f\"; echo; done",
    ]
    if nginx:
        parts += [
            "S nginx-v; nginx -V 2>&1 || echo missing",
            "S nginx-t; nginx -t 2>&1; echo \"exit=$?\"",
            "S nginx-files; nginx -T 2>/dev/null | sed -n 's/^# configuration file \\(.*\\):$/\\1/p' | "
            "while IFS= read -r f; do S nginx-file \"$f\"; readlink -f -- \"$f\"; "
            "base64 -w0 -- \"$f\"; echo; done",
        ]
    return "\n".join(parts) + "\n"


@dataclass(frozen=True)
class ConfigFile:
    """One nginx configuration file: the path nginx names, where it really lives, its exact text."""

    path: str
    real_path: str
    text: str


@dataclass(frozen=True)
class NginxFacts:
    """What nginx is and how it is configured."""

    version: tuple[int, ...]
    version_text: str
    openssl_version: tuple[int, ...]
    openssl_text: str
    sni: bool
    conf_path: str
    prefix: str
    test_ok: bool
    test_output: str
    files: dict[str, ConfigFile]
    tls_library: str = "OpenSSL"


@dataclass(frozen=True)
class Lineage:
    """A certificate lineage under /etc/letsencrypt: its public certificate and renewal config."""

    name: str
    cert_pem: str
    renewal_conf: str


@dataclass(frozen=True)
class HostFacts:
    """Everything certfab read from a host in one command."""

    host: str
    os_name: str
    hostname: str
    uid: int
    systemd: bool
    tools: frozenset[str]
    nginx: NginxFacts | None
    runtime_present: bool
    runtime_version: str
    image_present: bool
    image_id: str
    lineages: dict[str, Lineage]
    crontab: str
    cron_d: tuple[str, ...]
    competing_renewal: tuple[str, ...]
    owned_files: dict[str, str]
    journal: str
    status: dict[str, Any] | None = field(default=None)


def _sections(output: str) -> list[tuple[str, str, str]]:
    """Split marked output into (name, argument, body) triples, in order."""
    found = list(_SECTION.finditer(output))
    result = []
    for index, match in enumerate(found):
        end = found[index + 1].start() if index + 1 < len(found) else len(output)
        body = output[match.end() + 1 : end]
        result.append((match.group(1), match.group(2) or "", body.rstrip("\n")))
    return result


def parse_nginx_v(text: str) -> tuple[str, str, bool, str, str]:
    """Version, OpenSSL text, SNI support, conf path and prefix from `nginx -V` output."""
    version = re.search(r"nginx version: nginx/([\d.]+)", text)
    conf_path = re.search(r"--conf-path=(\S+)", text)
    prefix = re.search(r"--prefix=(\S+)", text)
    conf = conf_path.group(1) if conf_path else "/etc/nginx/nginx.conf"
    return (
        version.group(1) if version else "",
        tls.describe_tls_library(text),
        "TLS SNI support enabled" in text,
        conf,
        prefix.group(1) if prefix else conf.rsplit("/", 1)[0],
    )


def _b64(text: str) -> str:
    return base64.b64decode(text.strip() or b"").decode("utf-8", errors="surrogateescape")


def parse_status(text: str) -> dict[str, Any] | None:
    """The renewal script's status.json; an unreadable file is a status of its own."""
    try:
        loaded = json.loads(text)
    except ValueError:
        return {"result": "unreadable", "message": "status.json is not valid JSON"}
    return loaded if isinstance(loaded, dict) else None


def parse_facts(host: str, output: str) -> HostFacts:
    """Turn the facts script's output into HostFacts."""
    single: dict[str, str] = {}
    nginx_files: dict[str, ConfigFile] = {}
    lineage_certs: dict[str, str] = {}
    lineage_confs: dict[str, str] = {}
    owned: dict[str, str] = {}
    for name, arg, body in _sections(output):
        if name == "nginx-file":
            real, _, content = body.partition("\n")
            nginx_files[arg] = ConfigFile(arg, real.strip() or arg, _b64(content))
        elif name == "cert":
            lineage_certs[arg] = _b64(body)
        elif name == "renewal-conf":
            lineage_confs[arg] = body
        elif name == "owned-file":
            owned[arg] = _b64(body)
        else:
            single[name] = body
    nginx = None
    v_text = single.get("nginx-v", "missing")
    if "nginx version" in v_text:
        version, openssl, sni, conf, prefix = parse_nginx_v(v_text)
        test = single.get("nginx-t", "")
        try:
            # The library nginx runs with decides what TLS can do; the one it was built with may differ.
            capabilities: tls.HostTls | None = tls.parse_nginx_v(v_text)
        except PreflightError:
            capabilities = None
        nginx = NginxFacts(
            version=capabilities.nginx_version if capabilities else (),
            version_text=version,
            openssl_version=capabilities.openssl_version if capabilities else (),
            openssl_text=openssl,
            tls_library=capabilities.tls_library if capabilities else "",
            sni=sni,
            conf_path=conf,
            prefix=prefix,
            test_ok=test.rstrip().endswith("exit=0"),
            test_output=re.sub(r"\n?exit=\d+\s*$", "", test).strip(),
            files=nginx_files,
        )
    runtime = single.get("runtime", "missing")
    image = single.get("image", "missing").strip()
    status = parse_status(single["status"]) if single.get("status", "").strip() else None
    os_release = dict(
        line.split("=", 1) for line in single.get("os", "").splitlines() if "=" in line
    )
    return HostFacts(
        host=host,
        os_name=os_release.get("PRETTY_NAME", "unknown").strip('"'),
        hostname=single.get("hostname", "").strip(),
        uid=int(single.get("uid", "-1").strip() or -1),
        systemd=single.get("systemd", "").strip() == "yes",
        tools=frozenset(single.get("tools", "").split()),
        nginx=nginx,
        runtime_present=runtime.startswith("present"),
        runtime_version=runtime.removeprefix("present").strip().splitlines()[0] if runtime.startswith("present") and runtime.strip() != "present" else "",
        image_present=runtime.startswith("present") and image != "missing" and bool(image),
        image_id=image if image != "missing" else "",
        lineages={
            name: Lineage(name, pem, lineage_confs.get(name, "")) for name, pem in sorted(lineage_certs.items())
        },
        crontab=single.get("crontab", ""),
        cron_d=tuple(single.get("cron-d", "").split()),
        competing_renewal=tuple(single.get("competing", "").split()),
        owned_files=owned,
        journal=single.get("journal", ""),
        status=status,
    )


def gather(remote: Remote, *, nginx: bool = True) -> HostFacts:
    """Read a host's facts with exactly one remote command."""
    result = remote.check(facts_script(remote.host, nginx=nginx), what="reading facts")
    return parse_facts(remote.host.name, result.stdout)


def report_script() -> str:
    """The one command report-expiry runs: public certificates, renewal configs, status, cron line."""
    return "\n".join(
        [
            "LC_ALL=C; export LC_ALL",
            f"S() {{ printf '\\n{MARK} %s@@\\n' \"$*\"; }}",
            # Builtins instead of forks where they print the same: this runs on every host of the fleet.
            "S hostname; { read -r h < /proc/sys/kernel/hostname && printf '%s\\n' \"$h\"; } 2>/dev/null || hostname",
            f"S status; cat {STATUS_FILE} 2>/dev/null",
            CERTS_SECTION,
            f"S owned-file {CRON_FILE}; [ -f {CRON_FILE} ] && base64 -w0 {CRON_FILE}; echo",
            "S crontab; crontab -l -u root 2>/dev/null; true",
        ]
    ) + "\n"


def gather_for_report(remote: Remote) -> HostFacts:
    """Read what the expiry report needs with exactly one remote command."""
    result = remote.check(report_script(), what="reading certificates")
    return parse_facts(remote.host.name, result.stdout)
