#!/usr/bin/env bash
# Builds the Debian package: the four binaries (stripped), the systemd units
# and pgwarden.target, the sysusers.d file, pgwarden-rejoin, the example
# config and the README.
#
#   deploy/deb/build.sh [--bin-dir DIR] [--out DIR] [--compress xz|gzip|none]
#
# --bin-dir: where the binaries are (default: target/release, built here
# first with cargo build --release); --out: where the .deb goes (default:
# target/deb); --compress: dpkg-deb's compressor (default xz; the tests use
# none). Prints the path of the package it wrote.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin_dir="" out=target/deb compress=xz
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir=$2; shift ;;
        --out) out=$2; shift ;;
        --compress) compress=$2; shift ;;
        *) echo "usage: deploy/deb/build.sh [--bin-dir DIR] [--out DIR] [--compress xz|gzip|none]" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$bin_dir" ]; then
    cargo build --release -j2 --bins >&2
    bin_dir=target/release
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/pgwarden"

install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
    "$root/usr/lib/sysusers.d" "$root/usr/share/doc/pgwarden/examples" "$root/usr/lib/pgwarden"
for b in pgwarden-proxy pgwarden-monitor pgwarden-watchdog pgwardenctl; do
    [ -x "$bin_dir/$b" ] || { echo "deploy/deb/build.sh: no $bin_dir/$b (build it first)" >&2; exit 1; }
    install -m 0755 "$bin_dir/$b" "$root/usr/bin/$b"
    strip --strip-unneeded "$root/usr/bin/$b"
done
install -m 0755 deploy/scripts/pgwarden-rejoin "$root/usr/lib/pgwarden/pgwarden-rejoin"
for u in deploy/systemd/*.service deploy/systemd/pgwarden.target; do
    install -m 0644 "$u" "$root/lib/systemd/system/$(basename "$u")"
done
install -m 0644 deploy/systemd/pgwarden.sysusers "$root/usr/lib/sysusers.d/pgwarden.conf"
install -m 0644 deploy/pgwarden.example.toml "$root/usr/share/doc/pgwarden/examples/pgwarden.toml"
install -m 0644 README.md "$root/usr/share/doc/pgwarden/README.md"

size=$(du -sk "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: pgwarden
Version: $version
Architecture: $arch
Maintainer: pgwarden developers <pgwarden@localhost>
Installed-Size: $size
Depends: libc6
Recommends: iproute2, iputils-arping, postgresql-client
Section: database
Priority: optional
Homepage: https://github.com/pgwarden/pgwarden
Description: PostgreSQL failover middleware: proxy, monitor and watchdog
 pgwarden runs on every database node: pgwarden-proxy (clients connect to it;
 pooling, TLS, routing to the current primary), pgwarden-monitor (health
 checks, automatic failover, switchover, rejoin), pgwarden-watchdog (Raft
 among the nodes, failover only with a quorum, the delegate IP) and
 pgwardenctl, the admin CLI.
CONTROL
cat >"$root/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # The pgwarden user and group the units run as.
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers pgwarden.conf
    elif ! getent passwd pgwarden >/dev/null; then
        adduser --system --group --home /var/lib/pgwarden --no-create-home pgwarden
    fi
    install -d -m 0750 -o root -g pgwarden /etc/pgwarden
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
    fi
fi
# Nothing is enabled or started: write /etc/pgwarden/pgwarden.toml (see
# /usr/share/doc/pgwarden/examples/pgwarden.toml), then
#   systemctl enable --now pgwarden-watchdog pgwarden-monitor pgwarden-proxy
exit 0
POSTINST
cat >"$root/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
POSTRM
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"
mkdir -p "$out"
deb="$out/pgwarden_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compress" --build "$root" "$deb" >&2
echo "$deb"
