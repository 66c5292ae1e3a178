"""Where certfab keeps things on a managed host: the one definition every module imports."""

from __future__ import annotations

STATE_DIR = "/var/lib/certfab"
HOST_CONFIG_DIR = "/etc/certfab"
NGINX_CERTFAB_DIR = "/etc/nginx/certfab"

ACME_INCLUDE = f"{NGINX_CERTFAB_DIR}/acme-challenge.conf"
TLS_OPTIONS = f"{NGINX_CERTFAB_DIR}/tls-options.conf"
HSTS_INCLUDE = f"{NGINX_CERTFAB_DIR}/hsts.conf"
DHPARAM = f"{NGINX_CERTFAB_DIR}/ffdhe2048.pem"
MANAGED_SITE_DIR = "/etc/nginx/conf.d"

ACME_CA = f"{HOST_CONFIG_DIR}/acme-ca.pem"
RENEW_ENV = f"{HOST_CONFIG_DIR}/renew.env"
# DNS plugin credentials: a directory of their own, so facts (which read /etc/certfab/*) never read them.
DNS_CREDENTIALS_DIR = f"{HOST_CONFIG_DIR}/dns"
RENEW_SCRIPT = "/usr/local/sbin/certfab-renew"
CRON_FILE = "/etc/cron.d/certfab"

JOURNAL = f"{STATE_DIR}/journal"
STATUS_FILE = f"{STATE_DIR}/status.json"

LETSENCRYPT_LIVE = "/etc/letsencrypt/live"
DEFAULT_WEBROOT = "/var/www/letsencrypt"
LETSENCRYPT_RENEWAL = "/etc/letsencrypt/renewal"


def dns_credentials_path(plugin: str) -> str:
    """Where a DNS plugin's credentials live on a host (root, 0600), for certbot and its renewals."""
    return f"{DNS_CREDENTIALS_DIR}/{plugin}.ini"


def renewal_conf(lineage: str) -> str:
    """certbot's renewal configuration of a lineage."""
    return f"{LETSENCRYPT_RENEWAL}/{lineage}.conf"
SHARED_LINEAGES = "/etc/letsencrypt/certfab-shared"
