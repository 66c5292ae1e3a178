"""Properties of inventory values: each one is refused with one clear line, or rendered where it belongs.

For every field that reaches a host file, hypothesis generates values (valid ones, valid ones with one
hostile character inserted, look-alikes, boundary lengths, arbitrary text). A value must either be
refused by the inventory with a one-line InventoryError naming the field, or:

* every file certfab renders with it equals the files rendered with a plain reference value, with the
  reference replaced by the value (so the value lands only where the reference did and adds no token,
  directive, block or shell word of its own);
* a real `nginx -t -p TMP -c TMP/nginx.conf` accepts the rendered configuration, before and after HTTPS;
* the renewal settings file, sourced by /bin/sh, gives back exactly the value.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from certfactory import write_self_signed
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from certfab import tls, validate
from certfab.desired import changed_writes, desired_state, preflight, updated_facts_files
from certfab.errors import InventoryError, PreflightError
from certfab.facts import ConfigFile, HostFacts, NginxFacts
from certfab.inventory import Inventory, parse_inventory
from certfab.issue import EXIT_CERTBOT_FAILED, parse_issue_reply
from certfab.paths import RENEW_ENV
from certfab.protocol import Frame, Reply

NGINX = "/usr/sbin/nginx"
HAS_NGINX = os.path.exists(NGINX) and os.geteuid() == 0
DISPLAY = "inv.yaml"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MAIN_CONF = """events { worker_connections 64; }
http {
    include /etc/nginx/conf.d/*.conf;
    include /etc/nginx/sites-enabled/*;
}
"""
EXISTING_SITE = """# {name}: a plain HTTP site that was here before certfab
server {{
\tlisten 80;
\tserver_name {names};

\troot /var/www/plain;

\tlocation / {{
\t\ttry_files $uri $uri/ =404;
\t}}
}}
"""


# --- the inventory under test -----------------------------------------------------------------------


def base_inventory() -> dict[str, Any]:
    """One host with a managed site (certfab writes its blocks) and a site with an existing block."""
    return {
        "acme": {"email": "admin@example.com", "server": "staging"},
        "defaults": {"renewal": {"admin_email": "ops@example.com"}},
        "hosts": {
            "web1": {
                "address": "192.0.2.10",
                "sites": [
                    {"name": "shop", "domains": ["shop.example", "www.shop.example"],
                     "upstream": "http://127.0.0.1:8080"},
                    {"name": "plain", "domains": ["plain.example", "www.plain.example"]},
                ],
            }
        },
    }


def _site(index: int, key: str) -> Callable[[dict[str, Any], object], None]:
    def put(data: dict[str, Any], value: object) -> None:
        site = data["hosts"]["web1"]["sites"][index]
        if key == "domains":
            site["domains"][0] = value
        elif key == "root":
            site.pop("upstream", None)
            site["root"] = value
        else:
            site[key] = value
    return put


def _host(*keys: str) -> Callable[[dict[str, Any], object], None]:
    def put(data: dict[str, Any], value: object) -> None:
        target = data["hosts"]["web1"]
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        target[keys[-1]] = value
    return put


class Field:
    """A field under test: where its value goes, how it is checked, what it reads back as."""

    def __init__(self, path: str, put: Callable[[dict[str, Any], object], None],
                 check: Callable[[object], str], reference: str,
                 read: Callable[[Inventory], str], env_var: str | None = None) -> None:
        self.path, self.put, self.check, self.reference, self.read, self.env_var = (
            path, put, check, reference, read, env_var)

    def inventory(self, value: object) -> Inventory:
        data = base_inventory()
        self.put(data, value)
        return parse_inventory(data, Path(DISPLAY))


FIELDS = {
    "managed-domain": Field("hosts.web1.sites[0].domains[0]", _site(0, "domains"), validate.dns_name,
                            "zqref.example", lambda inv: inv.hosts[0].sites[0].domains[0]),
    "existing-domain": Field("hosts.web1.sites[1].domains[0]", _site(1, "domains"), validate.dns_name,
                             "zqref.example", lambda inv: inv.hosts[0].sites[1].domains[0]),
    "managed-site": Field("hosts.web1.sites[0].name", _site(0, "name"), validate.site_name,
                          "zqrefsite", lambda inv: inv.hosts[0].sites[0].name),
    "existing-site": Field("hosts.web1.sites[1].name", _site(1, "name"), validate.site_name,
                           "zqrefsite", lambda inv: inv.hosts[0].sites[1].name),
    "webroot": Field("hosts.web1.webroot", _host("webroot"), validate.host_path,
                     "/srv/zqrefweb", lambda inv: inv.hosts[0].webroot, "WEBROOT"),
    "root": Field("hosts.web1.sites[0].root", _site(0, "root"), validate.host_path,
                  "/srv/zqrefroot", lambda inv: inv.hosts[0].sites[0].root or ""),
    "upstream": Field("hosts.web1.sites[0].upstream", _site(0, "upstream"), validate.upstream_url,
                      "http://zqrefup.example:8080", lambda inv: inv.hosts[0].sites[0].upstream or ""),
    "admin-email": Field("hosts.web1.renewal.admin_email", _host("renewal", "admin_email"), validate.email,
                         "zqref@mail.example", lambda inv: inv.hosts[0].renewal.admin_email, "ADMIN_EMAIL"),
    "image": Field("hosts.web1.certbot.image", _host("certbot", "image"), validate.image_ref,
                   "zqref/certbot:v1", lambda inv: inv.hosts[0].certbot.image, "IMAGE"),
}


# --- generated values -------------------------------------------------------------------------------

HOSTILE = [*";$`(){}'\"\\#*&|<>!?%=+,~^[] \t\n\r", "..", "\x00", "\u0435", "\uff1b", "\u200b", "\u202e", "${IFS}"]
LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
DOMAIN = st.builds(lambda labels, tld: ".".join([*labels, tld]), st.lists(LABEL, min_size=1, max_size=3),
                   st.sampled_from(["example", "test", "org", "xn--p1ai"]))
PATH = st.builds(lambda parts: "/" + "/".join(parts), st.lists(st.from_regex(r"[A-Za-z0-9._+@-]{1,10}", fullmatch=True),
                                                                 min_size=1, max_size=4))
UPSTREAM = st.builds(lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
                     st.sampled_from(["http", "https"]), st.one_of(DOMAIN, st.just("127.0.0.1"), st.just("[::1]")),
                     st.sampled_from(["", ":8080", ":1"]), st.one_of(st.just(""), PATH))
EMAIL = st.builds(lambda local, domain: f"{local}@{domain}", st.from_regex(r"[A-Za-z0-9_+-]{1,10}", fullmatch=True),
                  DOMAIN)
IMAGE = st.builds(lambda repo, tag: f"{repo}:{tag}", st.from_regex(r"[a-z0-9]+(/[a-z0-9]+)?", fullmatch=True),
                  st.from_regex(r"v?[0-9]\.[0-9A-Za-z_.-]{0,6}", fullmatch=True))
VALID = {
    "managed-domain": DOMAIN, "existing-domain": DOMAIN, "managed-site": LABEL, "existing-site": LABEL,
    "webroot": PATH, "root": PATH, "upstream": UPSTREAM, "admin-email": EMAIL, "image": IMAGE,
}


def values(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Valid values, the same with one hostile piece inserted, look-alikes, long labels, any text."""
    def insert(args: tuple[str, int, str]) -> str:
        text, at, piece = args
        at = at % (len(text) + 1)
        return text[:at] + piece + text[at:]

    def confuse(text: str) -> str:
        return text.replace("e", "\u0435", 1).replace("o", "\u03bf", 1)

    return st.one_of(
        valid,
        st.tuples(valid, st.integers(0, 60), st.sampled_from(HOSTILE)).map(insert),
        valid.map(confuse),
        valid.map(str.upper),
        st.integers(58, 70).map(lambda n: "a" * n + ".example"),
        st.text(max_size=30),
    )


# --- rendering --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def nginx_versions() -> tls.HostTls:
    """The machine's nginx and OpenSSL (Debian 12's when nginx is not installed)."""
    if not HAS_NGINX:
        return tls.HostTls((1, 22, 1), (3, 0, 11))
    out = subprocess.run([NGINX, "-V"], capture_output=True, text=True, check=True)
    return tls.parse_nginx_v(out.stderr + out.stdout)


def host_facts(inventory: Inventory, test_ok: bool = True, main: str = MAIN_CONF) -> HostFacts:
    """Facts of a host whose nginx has a main file and the existing site's plain HTTP block."""
    existing = inventory.hosts[0].sites[1]
    files = {
        "/etc/nginx/nginx.conf": main,
        "/etc/nginx/sites-enabled/plain": EXISTING_SITE.format(name=existing.name, names=" ".join(existing.domains)),
    }
    versions = nginx_versions()
    nginx = NginxFacts(
        version=versions.nginx_version, version_text=".".join(map(str, versions.nginx_version)),
        openssl_version=versions.openssl_version, openssl_text="OpenSSL", sni=True,
        conf_path="/etc/nginx/nginx.conf", prefix="/etc/nginx", test_ok=test_ok, test_output="nginx -t failed",
        files={path: ConfigFile(path, path, text) for path, text in files.items()},
    )
    return HostFacts(
        host="web1", os_name="Debian", hostname="web1", uid=0, systemd=False, tools=frozenset({"flock"}),
        nginx=nginx, runtime_present=True, runtime_version="24", image_present=True, image_id="x",
        lineages={}, crontab="", cron_d=(), competing_renewal=(), owned_files={}, journal="",
    )


def rendered(inventory: Inventory, main: str = MAIN_CONF) -> dict[str, str]:
    """Every file of the host before, after phase http (ACME plumbing) and after phase https, as `phase:path`."""
    host = inventory.hosts[0]
    facts = host_facts(inventory, main=main)
    assert facts.nginx is not None
    out = {f"before:{path}": f.text for path, f in facts.nginx.files.items()}
    for phase, https in (("http", frozenset()), ("https", frozenset(s.name for s in host.sites))):
        desired = desired_state(host, inventory, facts, https_sites=https, acme_ca_pem=CA_PEM)
        state = updated_facts_files(facts, changed_writes(desired, facts))
        assert state.nginx is not None
        files = {f.real_path: f.text for f in state.nginx.files.values()}
        files.update(state.owned_files)
        out.update({f"{phase}:{path}": text for path, text in files.items()})
    return out


def self_signed(directory: Path, names: tuple[str, ...]) -> None:
    """A throwaway certificate and key where nginx expects a lineage."""
    write_self_signed(directory, names, days=1, common_name="certfab test")


def nginx_test(files: dict[str, str], phase: str, inventory: Inventory, main: str = MAIN_CONF) -> str | None:
    """Write one phase's nginx files under a temporary prefix, run the real `nginx -t`: None or its error."""
    with tempfile.TemporaryDirectory(prefix="certfab-prop-") as tmp:
        root = Path(tmp)

        upstream_host = urlsplit(inventory.hosts[0].sites[0].upstream or "http://127.0.0.1").hostname or ""

        def relocate(text: str) -> str:
            text = text.replace("/etc/nginx/", f"{root}/etc/nginx/").replace(
                "/etc/letsencrypt/", f"{root}/etc/letsencrypt/")
            # nginx resolves a proxy_pass host name when it loads; names here resolve nowhere.
            if upstream_host and not is_ip(upstream_host):
                text = text.replace(f"://{upstream_host}", "://127.0.0.1")
            return text

        for key, text in files.items():
            file_phase, path = key.split(":", 1)
            if file_phase == phase and path.startswith("/etc/nginx/"):
                target = root / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(relocate(text), encoding="utf-8", errors="surrogateescape")
        if phase == "https":
            for site in inventory.hosts[0].sites:
                self_signed(root / "etc/letsencrypt/live" / site.name, site.domains)
        (root / "etc/nginx/conf.d").mkdir(parents=True, exist_ok=True)
        temp = root / "temp"
        temp.mkdir()
        conf = root / "nginx.conf"
        conf.write_text(
            f"worker_processes 1;\npid {root}/nginx.pid;\nerror_log stderr;\n"
            + relocate(main).replace(
                "http {", f"http {{\n    access_log off;\n    client_body_temp_path {temp}/body;\n"
                f"    proxy_temp_path {temp}/proxy;\n    fastcgi_temp_path {temp}/fastcgi;\n"
                f"    uwsgi_temp_path {temp}/uwsgi;\n    scgi_temp_path {temp}/scgi;", 1)
        )
        cmd = [NGINX, "-t", "-p", str(root), "-c", str(conf)]
        if nginx_versions().nginx_version >= (1, 19, 5):
            cmd[2:2] = ["-e", "stderr"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0 or "[emerg]" in result.stderr:
            return result.stderr
        return None


def is_ip(text: str) -> bool:
    """Whether text is an IP address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def sourced(env_text: str, names: list[str]) -> list[str]:
    """What /bin/sh reads from a renew.env for the given variables."""
    script = ". \"$1\"; " + " ".join(f"printf '%s\\0' \"${name}\";" for name in names)
    with tempfile.NamedTemporaryFile("w", suffix=".env", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(env_text)
        handle.flush()
        out = subprocess.run(["/bin/sh", "-c", script, "sh", handle.name], capture_output=True, check=True)
    return out.stdout.decode("utf-8", errors="surrogateescape").split("\0")[:-1]


# --- the properties ---------------------------------------------------------------------------------


def refused_clearly(field: Field, value: object, error: InventoryError) -> None:
    """An inventory refusal is one printable line, naming the field when the value itself is invalid."""
    message = str(error)
    assert "\n" not in message and "\r" not in message, message
    assert message.isprintable(), message
    assert message.startswith(f"{DISPLAY}: hosts.web1."), message
    try:
        field.check(value)
    except validate.Invalid:
        assert message.startswith(f"{DISPLAY}: {field.path}: "), message


def check_value(name: str, value: str, record: Callable[[str], object] = lambda _outcome: None) -> None:
    """Refused with one clear line, or rendered exactly where the reference value goes, and nginx -t passes."""
    field = FIELDS[name]
    try:
        inventory = field.inventory(value)
    except InventoryError as error:
        record("refused by the inventory")
        refused_clearly(field, value, error)
        return
    # A host whose nginx -t already fails, or that cannot take a value, is refused before any change.
    before = rendered(inventory)
    before_ok = not HAS_NGINX or nginx_test(before, "before", inventory) is None
    try:
        preflight(inventory.hosts[0], host_facts(inventory, test_ok=before_ok))
    except PreflightError as error:
        assert "\n" not in str(error) and str(error).startswith("web1: "), str(error)
        record("refused by preflight")
        return
    record("rendered and given to nginx -t")
    normal = field.read(inventory)
    reference = field.reference
    files = before
    expected = {
        key.replace(reference, normal): text.replace(reference, normal)
        for key, text in rendered(field.inventory(reference)).items()
        if not key.endswith(RENEW_ENV)
    }
    assert {key: text for key, text in files.items() if not key.endswith(RENEW_ENV)} == expected
    host = inventory.hosts[0]
    env = files[f"https:{RENEW_ENV}"]
    assert sourced(env, ["HOST", "IMAGE", "ADMIN_EMAIL", "WEBROOT"]) == [
        "web1", host.certbot.image, host.renewal.admin_email, host.webroot]
    if field.env_var is not None:
        assert sourced(env, [field.env_var]) == [normal]
    if HAS_NGINX:
        for phase in ("http", "https"):
            problem = nginx_test(files, phase, inventory)
            assert problem is None, f"nginx -t refused the {phase} phase:\n{problem}"


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_reference_values_render_and_pass_nginx_t(name: str) -> None:
    """The reference values themselves are accepted and produce a configuration nginx accepts."""
    check_value(name, FIELDS[name].reference)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_value_is_refused_clearly_or_rendered_only_where_intended(name: str) -> None:
    """Each generated value: one-line InventoryError naming the field, or a faithful, nginx-valid render."""

    @PROPERTY
    @given(values(VALID[name]))
    @example("a" * 63 + ".example")
    @example("a" * 64 + ".example")
    @example("x;y")
    @example("$(reboot)")
    @example("-rf")
    def run(value: str) -> None:
        check_value(name, value, record=event)

    run()


def test_long_names_are_refused_before_any_change_unless_the_bucket_holds_them() -> None:
    """A 71-character name needs server_names_hash_bucket_size 128: refused with the fix, then accepted."""
    inventory = FIELDS["managed-domain"].inventory("a" * 63 + ".example")
    with pytest.raises(PreflightError, match=r"^web1: site shop: a{63}\.example has 71 characters, more than "
                       r"nginx's server_names_hash_bucket_size 64 holds \(46\); add "
                       r"`server_names_hash_bucket_size 128;` to the http block of /etc/nginx/nginx.conf$"):
        preflight(inventory.hosts[0], host_facts(inventory))
    main = MAIN_CONF.replace("http {", "http {\n    server_names_hash_bucket_size 128;")
    assert preflight(inventory.hosts[0], host_facts(inventory, main=main)) == []
    if HAS_NGINX:
        files = rendered(inventory, main=main)
        for phase in ("http", "https"):
            assert nginx_test(files, phase, inventory, main=main) is None


@PROPERTY
@given(st.lists(DOMAIN, min_size=1, max_size=4, unique=True), st.sampled_from(["connection", "unauthorized", "dns"]))
def test_certbot_validation_problems_name_every_domain(domains: list[str], kind: str) -> None:
    """certbot's per-domain problems, as the issue script passes them on, become one line naming each domain."""
    lines = ["Certbot failed to authenticate some domains (authenticator: webroot).", ""]
    for domain in domains:
        lines += [f"  Domain: {domain}", f"  Type:   {kind}", f"  Detail: fetching http://{domain}/: it failed", ""]
    lines.append("Some challenges have failed.")
    output = ("\n".join(lines) + "\n").encode()
    result = parse_issue_reply(Reply(EXIT_CERTBOT_FAILED, (Frame("certbot-failed", "shop", output),)))
    assert len(result.certbot_failures) == 1
    failure = result.certbot_failures[0]
    assert failure.startswith("shop: the CA could not validate ") and "\n" not in failure
    for domain in domains:
        assert f"{domain} ({kind}): fetching http://{domain}/: it failed" in failure


def test_sh_and_nginx_are_available_for_the_render_checks() -> None:
    """The render checks need /bin/sh (always) and a real nginx run as root (else nginx -t is skipped)."""
    assert shutil.which("sh") is not None
    if not HAS_NGINX:
        pytest.skip("no /usr/sbin/nginx or not root: rendered files are compared but not given to nginx -t")
    assert re.match(r"\d", ".".join(map(str, nginx_versions().nginx_version)))


def test_a_latin1_byte_in_the_existing_site_is_kept_and_nginx_accepts_both_phases() -> None:
    """One non-UTF-8 byte (a Latin-1 comment) neither refuses the host nor changes outside the edits."""
    inventory = FIELDS["existing-site"].inventory(FIELDS["existing-site"].reference)
    facts = host_facts(inventory)
    assert facts.nginx is not None
    path = "/etc/nginx/sites-enabled/plain"
    latin1 = "# caf\udce9 cr\udce8me\n" + facts.nginx.files[path].text
    facts = replace(facts, nginx=replace(facts.nginx, files={**facts.nginx.files, path: ConfigFile(path, path, latin1)}))
    host = inventory.hosts[0]
    assert preflight(host, facts) == []
    files: dict[str, str] = {}
    for phase, https in (("http", frozenset()), ("https", frozenset(s.name for s in host.sites))):
        desired = desired_state(host, inventory, facts, https_sites=https, acme_ca_pem=CA_PEM)
        state = updated_facts_files(facts, changed_writes(desired, facts))
        assert state.nginx is not None
        text = state.nginx.files[path].text
        assert text.encode("utf-8", errors="surrogateescape").startswith(b"# caf\xe9 cr\xe8me\n# ")
        files.update({f"{phase}:{f.real_path}": f.text for f in state.nginx.files.values()})
        files.update({f"{phase}:{p}": t for p, t in state.owned_files.items()})
    if HAS_NGINX:
        for phase in ("http", "https"):
            problem = nginx_test(files, phase, inventory)
            assert problem is None, f"nginx -t refused the {phase} phase:\n{problem}"
