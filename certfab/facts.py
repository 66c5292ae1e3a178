"""A host's facts as typed values, and the pure halves of reading them: script contexts and parsers.

The reading itself (remote commands) is certfab.gather."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field

from certfab import includes
from certfab.errors import PreflightError
from certfab.inventory import Host
from certfab.origin import ORIGIN_DIR
from certfab.paths import (
    CRON_FILE,
    DNS_CREDENTIALS_DIR,
    HOST_CONFIG_DIR,
    JOURNAL,
    NGINX_CERTFAB_DIR,
    RENEW_SCRIPT,
    STATUS_FILE,
)
from certfab.protocol import Reply
from certfab.renewal_status import RenewalStatus, parse_status

# Files certfab owns outside nginx's own tree, as (directory, glob); their content is read back so
# plans can diff them.
OWNED_GLOBS = (
    (NGINX_CERTFAB_DIR, "*"),
    ("/etc/nginx/conf.d", "certfab-*.conf"),
    (posixpath.dirname(RENEW_SCRIPT), posixpath.basename(RENEW_SCRIPT)),
    (posixpath.dirname(CRON_FILE), posixpath.basename(CRON_FILE)),
    (HOST_CONFIG_DIR, "*"),
    (ORIGIN_DIR, "*.json"),
)
FACTS_SCRIPT = "facts.sh.j2"
REPORT_SCRIPT = "report.sh.j2"
NGINX_FILES_SCRIPT = "nginx-files.sh.j2"
# Include depth nginx configurations really have is 2 or 3; a deeper chain is read no further.
MAX_INCLUDE_ROUNDS = 8


def facts_context(host: Host, *, nginx: bool = True) -> dict[str, object]:
    """What facts.sh.j2 needs to print every fact certfab reads about a host.

    It reads only public material: configuration, certificates (cert.pem, never privkey.pem),
    renewal configs, crontabs and certfab's own state.
    """
    return {
        "runtime": host.certbot.runtime,
        "image": host.certbot.image,
        "journal": JOURNAL,
        "status_file": STATUS_FILE,
        "owned_globs": [{"dir": d, "pattern": g} for d, g in OWNED_GLOBS],
        "secret_dir": DNS_CREDENTIALS_DIR,
        "nginx": nginx,
        "probe": False,
        "stamp_key": None,
    }


def report_context() -> dict[str, object]:
    return {"status_file": STATUS_FILE, "cron_file": CRON_FILE}


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
    # Files nginx loads that certfab did not read (key locations, too large, unreadable): path -> why.
    refused_files: dict[str, str] = field(default_factory=dict)


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
    status: RenewalStatus | None = field(default=None)
    # Secret files certfab installed (DNS plugin credentials): path -> sha256, never their content.
    secret_files: dict[str, str] = field(default_factory=dict)
    # Copies of shared sites' lineages (certfab's, under paths.SHARED_LINEAGES): site -> cert.pem.
    shared_copies: dict[str, str] = field(default_factory=dict)
    # Lineages whose cert.pem the host kept back (it holds a private key): lineage -> why.
    refused_certs: dict[str, str] = field(default_factory=dict)


def parse_nginx_v(text: str) -> tuple[str, str, bool, str, str]:
    """Version, OpenSSL text, SNI support, conf path and prefix from `nginx -V` output."""
    from certfab import tls  # TLS rules load with a full read, not on the no-change path

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


def parse_facts(host: str, reply: Reply, nginx_files: dict[str, ConfigFile] | None = None,
                refused: dict[str, str] | None = None) -> HostFacts:
    """Turn the facts script's frames (and the nginx files read after it) into HostFacts."""
    lineages = {
        f.arg: Lineage(f.arg, f.body.decode("ascii", errors="replace"), reply_texts(reply, "renewal-conf").get(f.arg, ""))
        for f in reply.all("cert")
    }
    nginx = None
    v_text = reply.text("nginx-v", "missing")
    if "nginx version" in v_text:
        from certfab import tls  # TLS rules load with a full read, not for the expiry report

        version, openssl, sni, conf, prefix = parse_nginx_v(v_text)
        test = reply.get("nginx-t")
        try:
            # The library nginx runs with decides what TLS can do; the one it was built with may differ.
            capabilities: tls.HostTls | None = tls.parse_nginx_v(v_text)
        except PreflightError:
            capabilities = None
        main = reply.text("nginx-conf", conf) or conf
        nginx = NginxFacts(
            version=capabilities.nginx_version if capabilities else (),
            version_text=version,
            openssl_version=capabilities.openssl_version if capabilities else (),
            openssl_text=openssl,
            tls_library=capabilities.tls_library if capabilities else "",
            sni=sni,
            conf_path=main,
            prefix=posixpath.dirname(main) or prefix,
            test_ok=test is not None and test.arg == "0",
            test_output=test.text.strip() if test is not None else "",
            files=dict(nginx_files or {}),
            refused_files=dict(refused or {}),
        )
    runtime = reply.get("runtime")
    image = reply.text("image").strip()
    status_text = reply.text("status")
    status = parse_status(status_text) if status_text.strip() else None
    os_release = dict(line.split("=", 1) for line in reply.text("os").splitlines() if "=" in line)
    runtime_lines = runtime.text.strip().splitlines() if runtime is not None else []
    uid_text = reply.text("uid").strip()
    return HostFacts(
        host=host,
        os_name=os_release.get("PRETTY_NAME", "unknown").strip('"'),
        hostname=reply.text("hostname").strip(),
        uid=int(uid_text) if uid_text.isdigit() else -1,
        systemd=reply.text("systemd").strip() == "yes",
        tools=frozenset(f.text for f in reply.all("tool")),
        nginx=nginx,
        runtime_present=runtime is not None,
        runtime_version=runtime_lines[0] if runtime_lines else "",
        image_present=runtime is not None and bool(image),
        image_id=image,
        lineages=dict(sorted(lineages.items())),
        crontab=reply.text("crontab"),
        cron_d=tuple(f.text for f in reply.all("cron-d")),
        competing_renewal=tuple(f.text for f in reply.all("competing")),
        owned_files={f.arg: f.text for f in reply.all("owned-file")},
        journal="\n".join(f.text for f in reply.all("journal")),
        status=status,
        secret_files={f.arg: f.text.split()[0] for f in reply.all("secret-sha256") if f.text.split()},
        shared_copies={f.arg: f.body.decode("ascii", errors="replace") for f in reply.all("shared-cert")},
        refused_certs={f.arg: f.text for f in reply.all("cert-refused")},
    )


def reply_texts(reply: Reply, name: str) -> dict[str, str]:
    """Frames called `name` as {argument: text}."""
    return {f.arg: f.text for f in reply.all(name)}


def take_file_frames(reply: Reply, files: dict[str, ConfigFile], refused: dict[str, str],
                     expanded: dict[str, tuple[str, ...]]) -> None:
    """Add one reading round's nginx files, refusals and glob matches to what was read before."""
    real = reply_texts(reply, "nginx-real")
    for frame in reply.all("nginx-file"):
        real_path = real.get(frame.arg, frame.arg)
        if includes.denied(frame.arg) or includes.denied(real_path):
            refused[frame.arg] = f"is a private key location ({real_path})"
            continue
        files[frame.arg] = ConfigFile(frame.arg, real_path, frame.text)
    for frame in reply.all("nginx-refused"):
        refused[frame.arg] = frame.text
    matches: dict[str, list[str]] = {f.arg: [] for f in reply.all("nginx-pattern")}
    for frame in reply.all("nginx-match"):
        matches.setdefault(frame.arg, []).append(frame.text)
    for pattern, found in matches.items():
        expanded[pattern] = tuple(sorted(found))
