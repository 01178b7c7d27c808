"""The part of a node config each pgwarden daemon reads.

The role restarts a daemon only when one of its inputs changed (its binary,
its unit, the part of pgwarden.toml it reads, its secret files). Which part
of the file a daemon reads is written here, once, from the daemons' own
settings (crates/*/src/settings.rs):

- pgwarden-watchdog: [node], [watchdog];
- pgwarden-monitor: [node], [[backends]], [monitor], [health_check],
  [replication_check], [failover], [server_tls], [admin], and
  watchdog.enabled (whether it asks the watchdogs before a failover);
- pgwarden-proxy: [node], [[backends]], [proxy], [health_check] (it
  discovers the primary itself when no monitor answers),
  [replication_check] (lag bounds for reads), [server_tls], and
  watchdog.enabled (whether it routes by the watchdog's lease).

A section this table does not know counts for every daemon, so a new
section restarts too much rather than too little.
"""

import hashlib
import re

VIEWS = {
    "pgwarden-watchdog": {"node", "watchdog"},
    "pgwarden-monitor": {
        "node", "backends", "monitor", "health_check", "replication_check",
        "failover", "server_tls", "admin", "watchdog.enabled",
    },
    "pgwarden-proxy": {
        "node", "backends", "proxy", "health_check", "replication_check",
        "server_tls", "watchdog.enabled",
    },
}
KNOWN = {"node", "backends", "proxy", "monitor", "health_check",
         "replication_check", "failover", "watchdog", "server_tls", "admin"}

HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.-]+)\s*\]\]?\s*(#.*)?$")
KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def _reads(daemon, section, key):
    view = VIEWS[daemon]
    if section is None:
        return True
    if section not in KNOWN or section in view:
        return True
    return key is not None and f"{section}.{key}" in view


def pgwarden_config_view(text, daemon):
    """The sha256 of the lines of `text` (a pgwarden.toml) that `daemon` reads.

    Comments and blank lines do not count; [[backends]] tables count in
    order (a backend's id is its position). A multi-line value (an array
    over several lines) belongs to the key that opened it.
    """
    if daemon not in VIEWS:
        raise ValueError(f"pgwarden_config_view: unknown daemon {daemon!r}")
    digest = hashlib.sha256()
    section = None
    key = None
    for line in str(text).splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        header = HEADER.match(line)
        if header:
            section, key = header.group(1), None
            if _reads(daemon, section, None) or any(
                v.startswith(section + ".") for v in VIEWS[daemon]
            ):
                digest.update(("[" + section + "]\n").encode())
            continue
        k = KEY.match(line)
        if k:
            key = k.group(1)
        if _reads(daemon, section, key):
            digest.update((stripped + "\n").encode())
    return digest.hexdigest()


class FilterModule:
    """pgwarden_config_view: which part of pgwarden.toml a daemon reads."""

    def filters(self):
        return {"pgwarden_config_view": pgwarden_config_view}
