#!/usr/bin/env bash
# The fleet test (issue 12, item 4): pgwarden deployed the way an operator
# deploys it, on three Debian bookworm hosts that boot systemd, by the
# repository's own Ansible playbooks, then checked from a client.
#
#   deploy/test/fleet.sh [--bin-dir DIR] [--keep] [--teardown]    (as root)
#
# --bin-dir DIR  take the four binaries from DIR instead of building them
#                (cargo build --release); with a pgwarden_*.deb in DIR, the
#                role installs that package instead (pgwarden_package_file)
# --keep         leave the hosts up at the end (enter one with
#                nsenter -t "$(cat /var/lib/pgwarden-fleet/run/fleet-pg0.leader)" -a;
#                stop them with --teardown)
# --teardown     only stop and remove what an earlier run left (--keep)
#
# What it does, each phase printed with its time:
# 1. A Debian bookworm root, debootstrapped once and cached in
#    /var/cache/pgwarden-fleet/bookworm (systemd, PostgreSQL 15 without a
#    cluster, python3, ip, arping). The mirror and the suites are the ones
#    of this machine's own apt sources (FLEET_MIRROR overrides the mirror).
#    Delete the directory to rebuild it; FLEET_REFRESH=1 does it too.
# 2. A network namespace "fleet" with a bridge fleetbr0, 10.214.0.0/24 and no
#    route out (10.214, not 10.213: the e2e lab's namespaces use 10.213.0.0/24),
#    the client at 10.214.0.1 on the bridge, and three hosts fleet-pg0..2
#    (10.214.0.11-13; the delegate IP is 10.214.0.100), each
#    systemd-nspawn --register=no --keep-unit -b on an overlay of the root,
#    started inside the namespace with nsenter --net= (ip netns exec breaks
#    nspawn).
# 3. deploy/ansible/bootstrap.yml (initdb on fleet-pg0, pg_basebackup -R -C
#    -S on the others), then site.yml, through the community.docker.nsenter
#    connection, with the variables of deploy/test/fleet-vars.yml.
# 4. Checks: the 9 units active and Type=notify (so systemd had READY=1);
#    a query through each proxy and through the delegate IP reaches the
#    primary; exactly one host holds the delegate IP; a second run of both
#    playbooks reports changed=0; a run that changes a proxy key and a
#    watchdog key restarts the proxies and the watchdogs but no monitor, the
#    leader's host last, waiting for the quorum after each watchdog;
#    restarting the leader's pgwarden-monitor
#    while a client queries through its proxy fails no query; the primary's
#    PostgreSQL killed, every proxy and the delegate IP reach the promoted
#    standby; a daemon killed 6 times in a row is restarted each time
#    (NRestarts).
# It ends with one line:
#   fleet: hosts=3 units_active=9 vip_holders=1 failover=ok idempotent=ok restarts=ok
# and stops everything it started (unless --keep). Every wait is bounded.
#
# Logs: /var/lib/pgwarden-fleet/logs (the hosts' consoles, the playbook runs,
# each host's journal of the pgwarden and postgresql units).
# Needs: root, debootstrap, systemd-nspawn (systemd-container), nsenter,
# ip, psql, and ansible with community.docker (pip install ansible; found
# on PATH or in /opt/pgwarden-ansible/bin, or FLEET_ANSIBLE_BIN=DIR).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

cache_dir=${FLEET_CACHE_DIR:-/var/cache/pgwarden-fleet}
state_dir=${FLEET_STATE_DIR:-/var/lib/pgwarden-fleet}
rootfs=$cache_dir/bookworm
logs=$state_dir/logs
run=$state_dir/run
netns=fleet
bridge=fleetbr0
net=10.214.0
client_ip=$net.1
vip=$net.100
hosts=(fleet-pg0 fleet-pg1 fleet-pg2)
pg_unit=postgresql@15-main
units=(pgwarden-watchdog pgwarden-monitor pgwarden-proxy)
proxy_port=9999

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

bin_dir="" keep=0 teardown_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) [ $# -ge 2 ] || { usage >&2; exit 2; }; bin_dir=$2; shift ;;
        --keep) keep=1 ;;
        --teardown) teardown_only=1 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
    shift
done

now() { date +%s.%N; }
# Seconds since $1 (a now), one decimal.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf 'fleet: [%6ss] %s\n' "$(since "$t_start")" "$*"; }
t_start=$(now)
die() { echo "fleet: FAILED: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, systemd-nspawn)"

# --- the hosts -----------------------------------------------------------------

# The PID of host i's init (its PID 1), as nsenter -t wants it.
leader() { cat "$run/${hosts[$1]}.leader"; }
# Runs a command on host i (all its namespaces, its root), for 60 s at most.
on() {
    local i=$1
    shift
    timeout 60 nsenter -t "$(leader "$i")" -a -- "$@"
}
host_ip() { echo "$net.$((11 + $1))"; }
in_netns() { nsenter --net="/run/netns/$netns" -- "$@"; }

# The cgroups host $1 runs in: one in each hierarchy that tracks processes
# (cgroup2, and name=systemd where v1 is mounted beside it).
cgroup_dirs() {
    if [ -d /sys/fs/cgroup/unified ]; then
        echo "/sys/fs/cgroup/unified/pgwarden-fleet/$1"
        if [ -d /sys/fs/cgroup/systemd ]; then echo "/sys/fs/cgroup/systemd/pgwarden-fleet/$1"; fi
    else
        echo "/sys/fs/cgroup/pgwarden-fleet/$1"
    fi
}

# Ends a playbook still running (an interrupted run), by its PID.
stop_playbook() {
    if [ -n "${playbook_pid:-}" ] && kill -0 "$playbook_pid" 2>/dev/null; then
        kill -TERM "$playbook_pid" 2>/dev/null || true
        wait "$playbook_pid" 2>/dev/null || true
    fi
}

# Stops what a run started: the hosts (their nspawn, by the PID it
# recorded, SIGTERM = clean poweroff, then SIGKILL), their overlays, the
# namespace. Only what the pid files name, and only if it is that nspawn.
teardown() {
    local i name pid deadline t0
    t0=$(now)
    for i in "${!hosts[@]}"; do
        name=${hosts[$i]}
        if [ -f "$run/$name.nspawn" ]; then
            pid=$(cat "$run/$name.nspawn")
            if [ -r "/proc/$pid/cmdline" ] &&
                tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "systemd-nspawn.* -M $name "; then
                on "$i" journalctl --no-pager -o short-precise -u 'pgwarden-*' -u "$pg_unit" \
                    >"$logs/$name.journal.log" 2>&1 || true
                kill -TERM "$pid" 2>/dev/null || true
            fi
        fi
    done
    for i in "${!hosts[@]}"; do
        name=${hosts[$i]}
        [ -f "$run/$name.nspawn" ] || continue
        pid=$(cat "$run/$name.nspawn")
        deadline=$(($(date +%s) + 30))
        while [ -d "/proc/$pid" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
        if [ -d "/proc/$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "systemd-nspawn.* -M $name "; then
            echo "fleet: $name did not power off in 30 s, killing its nspawn" >&2
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
        fi
        rm -f "$run/$name.nspawn" "$run/$name.leader"
    done
    local cg
    for name in "${hosts[@]}"; do
        for cg in $(cgroup_dirs "$name"); do
            if [ -d "$cg" ]; then
                find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
                rmdir "$(dirname "$cg")" 2>/dev/null || true
            fi
        done
        if mountpoint -q "$state_dir/hosts/$name/root"; then
            umount "$state_dir/hosts/$name/root" || umount -l "$state_dir/hosts/$name/root"
        fi
        rm -rf "$state_dir/hosts/$name"
    done
    if ip netns list | grep -qx "$netns\( .*\)\{0,1\}"; then
        ip netns del "$netns"
    fi
    say "teardown: $(since "$t0") s"
}

if [ "$teardown_only" -eq 1 ]; then
    mkdir -p "$logs"
    teardown
    exit 0
fi

for c in debootstrap systemd-nspawn nsenter ip psql mountpoint strip pgrep setsid dpkg-deb; do
    command -v "$c" >/dev/null || die "needs $c"
done
ansible_bin=${FLEET_ANSIBLE_BIN:-}
if [ -z "$ansible_bin" ]; then
    if command -v ansible-playbook >/dev/null; then
        ansible_bin=$(dirname "$(command -v ansible-playbook)")
    elif [ -x /opt/pgwarden-ansible/bin/ansible-playbook ]; then
        ansible_bin=/opt/pgwarden-ansible/bin
    else
        die "needs ansible-playbook (pip install ansible, e.g. into /opt/pgwarden-ansible)"
    fi
fi
"$ansible_bin/ansible-doc" -t connection community.docker.nsenter >/dev/null 2>&1 ||
    die "$ansible_bin/ansible has no community.docker.nsenter connection (pip install ansible, not ansible-core)"

# An earlier run that died or was kept.
if [ -d "$run" ] && ls "$run"/*.nspawn >/dev/null 2>&1 || ip netns list | grep -qx "$netns\( .*\)\{0,1\}"; then
    say "stopping what an earlier run left"
    mkdir -p "$logs"
    teardown
fi
rm -rf "$logs"
mkdir -p "$logs" "$run"
if [ "$keep" -eq 0 ]; then
    trap 'rc=$?; trap - EXIT; stop_playbook; teardown; exit $rc' EXIT
fi
trap 'exit 130' INT TERM

# --- 1. the root -----------------------------------------------------------------

# The mirror and suites this machine's apt uses (deb822 or one-line form).
apt_sources() {
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        cat /etc/apt/sources.list.d/debian.sources
    fi
    if [ -f /etc/apt/sources.list ]; then
        grep -E '^deb ' /etc/apt/sources.list || true
    fi
}
mirror=${FLEET_MIRROR:-$(apt_sources | sed -n 's/^URIs: *\([^ ]*\).*/\1/p; s/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) bookworm .*/\2/p' | head -1)}
[ -n "$mirror" ] || die "no Debian mirror in this machine's apt sources (set FLEET_MIRROR)"

root_packages=(
    systemd systemd-sysv dbus libpam-systemd python3 python3-apt sudo procps
    iproute2 iputils-arping iputils-ping less
)
pg_packages=(postgresql-15 postgresql-client-15)

build_root() {
    local tmp=$cache_dir/bookworm.tmp
    rm -rf "$tmp"
    mkdir -p "$cache_dir"
    debootstrap --variant=minbase --include="$(
        IFS=,
        echo "${root_packages[*]}"
    )" bookworm "$tmp" "$mirror" >"$logs/debootstrap.log" 2>&1 ||
        die "debootstrap failed: $logs/debootstrap.log"
    # The same suites as this machine (updates and security too).
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        rm -f "$tmp/etc/apt/sources.list"
        cp /etc/apt/sources.list.d/debian.sources "$tmp/etc/apt/sources.list.d/debian.sources"
    fi
    # No cluster at install time: the bootstrap role creates it.
    mkdir -p "$tmp/etc/postgresql-common"
    echo "create_main_cluster = false" >"$tmp/etc/postgresql-common/createcluster.conf"
    cp /etc/resolv.conf "$tmp/etc/resolv.conf"
    chroot_run "$tmp" /bin/sh -c "
        set -e
        export DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
        apt-get update -q
        apt-get -y -q -o Dpkg::Options::=--force-confold dist-upgrade
        apt-get install -y -q --no-install-recommends ${pg_packages[*]}
        apt-get clean
        rm -rf /var/lib/apt/lists/*
    " >>"$logs/debootstrap.log" 2>&1 || die "installing PostgreSQL into the root failed: $logs/debootstrap.log"
    rm -f "$tmp/etc/resolv.conf"
    echo "LANG=C.UTF-8" >"$tmp/etc/default/locale"
    # Quick boots, nothing on a timer.
    local u
    for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
        e2scrub_reap.service systemd-timesyncd.service getty@tty1.service; do
        ln -sf /dev/null "$tmp/etc/systemd/system/$u"
    done
    chroot_run "$tmp" systemctl enable systemd-networkd >>"$logs/debootstrap.log" 2>&1
    : >"$tmp/etc/machine-id"
    printf '%s\n' "$(date -u +%FT%TZ)" >"$tmp/.fleet-root-complete"
    rm -rf "$rootfs"
    mv "$tmp" "$rootfs"
}

# Runs a command in a root that is not booted (chroot with /proc, /sys, /dev).
chroot_run() {
    local dir=$1
    shift
    mount -t proc proc "$dir/proc"
    mount --rbind /sys "$dir/sys"
    mount --rbind /dev "$dir/dev"
    local rc=0
    chroot "$dir" "$@" || rc=$?
    umount -R "$dir/dev" || umount -l "$dir/dev"
    umount -R "$dir/sys" || umount -l "$dir/sys"
    umount "$dir/proc" || umount -l "$dir/proc"
    return "$rc"
}

if [ "${FLEET_REFRESH:-0}" = 1 ] || [ ! -f "$rootfs/.fleet-root-complete" ]; then
    t=$(now)
    say "debootstrap: building the bookworm root in $rootfs (from $mirror)"
    build_root
    say "debootstrap: done in $(since "$t") s"
else
    say "debootstrap: cached root from $(cat "$rootfs/.fleet-root-complete") ($rootfs)"
fi


# --- 2. the binaries ----------------------------------------------------------------

# A pgwarden_*.deb in the directory is what the role installs
# (pgwarden_package_file, with dpkg: the package's binaries and units);
# otherwise the role copies pgwarden_build_dir/<binary> to every host, from
# stripped copies staged here.
stage=$state_dir/bin
rm -rf "$stage"
mkdir -p "$stage"
binaries=(pgwarden-proxy pgwarden-monitor pgwarden-watchdog pgwardenctl)
t=$(now)
if [ -z "$bin_dir" ]; then
    target=${CARGO_TARGET_DIR:-$repo/target}
    say "build: cargo build --release (the four binaries; CARGO_TARGET_DIR=$target)"
    (cd "$repo" && cargo build --release -j "${FLEET_BUILD_JOBS:-2}" \
        --bin pgwarden-proxy --bin pgwarden-monitor --bin pgwarden-watchdog --bin pgwardenctl) \
        >"$logs/build.log" 2>&1 ||
        die "cargo build failed: $logs/build.log"
    bin_dir=$target/release
    say "build: done in $(since "$t") s"
fi
deb=$(find "$bin_dir" -maxdepth 1 -name 'pgwarden_*.deb' | sort | tail -1)
install_vars=()
if [ -n "$deb" ]; then
    deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")
    contents=$(dpkg-deb -c "$deb") || die "dpkg-deb cannot read $deb"
    for b in "${binaries[@]}"; do
        grep -q " \./usr/bin/$b\$" <<<"$contents" || die "$deb has no /usr/bin/$b"
    done
    install_vars=(-e "pgwarden_package_file=$deb")
    say "binaries: the package $deb ($(du -h "$deb" | cut -f1)), installed by the role with dpkg"
else
    for b in "${binaries[@]}"; do
        [ -x "$bin_dir/$b" ] || die "no $bin_dir/$b (build it, or --bin-dir DIR)"
        strip --strip-unneeded -o "$stage/$b" "$bin_dir/$b"
    done
    install_vars=(-e "pgwarden_build_dir=$stage")
    say "binaries: stripped copies of $bin_dir/ ($(du -sh "$stage" | cut -f1)), copied by the role"
fi

# --- 3. the network and the hosts ------------------------------------------------------

ip netns add "$netns"
in_netns ip link set lo up
in_netns ip link add "$bridge" type bridge
in_netns ip addr add "$client_ip/24" dev "$bridge"
in_netns ip link set "$bridge" up

boot() {
    local i=$1 name=${hosts[$1]} dir
    dir=$state_dir/hosts/$name
    mkdir -p "$dir/upper" "$dir/work" "$dir/root"
    mount -t overlay overlay -o "lowerdir=$rootfs,upperdir=$dir/upper,workdir=$dir/work" "$dir/root"
    mkdir -p "$dir/root/etc/systemd/network"
    cat >"$dir/root/etc/systemd/network/10-fleet.network" <<NETWORK
[Match]
Name=host0

[Network]
Address=$(host_ip "$i")/24
LinkLocalAddressing=no
IPv6AcceptRA=no
NETWORK
    echo "$name" >"$dir/root/etc/hostname"
    {
        echo "127.0.0.1 localhost"
        for j in "${!hosts[@]}"; do echo "$(host_ip "$j") ${hosts[$j]}"; done
    } >"$dir/root/etc/hosts"
    systemd-machine-id-setup --root="$dir/root" >/dev/null 2>&1
    # Each host in a cgroup of its own: with --keep-unit, nspawn puts the
    # host's tree under its own cgroup, and three nspawns in one cgroup share
    # one tree (every host's systemd then sees the others' processes in its
    # units, as PID 0, and cannot kill a unit's control group: EIO).
    # SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1: the hosts run on cgroup2 alone, as
    # bookworm does, even where this machine mounts v1 beside v2 (hybrid).
    # setsid: its own session, so the terminal's signals stay with us.
    local cg
    for cg in $(cgroup_dirs "$name"); do mkdir -p "$cg"; done
    (
        for cg in $(cgroup_dirs "$name"); do echo "$BASHPID" >"$cg/cgroup.procs"; done
        exec env SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 nsenter --net="/run/netns/$netns" -- \
            setsid systemd-nspawn --register=no --keep-unit -b -q \
            -D "$dir/root" -M "$name" --network-bridge="$bridge" --console=read-only
    ) </dev/null >"$logs/$name.console.log" 2>&1 &
    echo $! >"$run/$name.nspawn"
}

# The host's init: the process in a PID namespace of its own whose PID there
# is 1, started by this nspawn (its child, or its child's).
find_leader() {
    local nspawn=$1 p c
    for p in $(pgrep -P "$nspawn") $(for c in $(pgrep -P "$nspawn"); do pgrep -P "$c"; done); do
        if [ "$(awk '/^NSpid:/ { print $NF }' "/proc/$p/status" 2>/dev/null)" = 1 ]; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

t=$(now)
for i in "${!hosts[@]}"; do boot "$i"; done
for i in "${!hosts[@]}"; do
    name=${hosts[$i]}
    deadline=$(($(date +%s) + 60))
    until leader_pid=$(find_leader "$(cat "$run/$name.nspawn")"); do
        [ -d "/proc/$(cat "$run/$name.nspawn")" ] || die "$name: systemd-nspawn exited: $logs/$name.console.log"
        [ "$(date +%s)" -lt "$deadline" ] || die "$name: no init after 60 s: $logs/$name.console.log"
        sleep 0.2
    done
    echo "$leader_pid" >"$run/$name.leader"
done
for i in "${!hosts[@]}"; do
    name=${hosts[$i]}
    deadline=$(($(date +%s) + 90))
    while :; do
        state=$(on "$i" systemctl is-system-running 2>&1 || true)
        case "$state" in running | degraded) break ;; esac
        [ "$(date +%s)" -lt "$deadline" ] || break
        sleep 0.2
    done
    case "$state" in
        running) ;;
        degraded)
            echo "fleet: $name is degraded: $(on "$i" systemctl --failed --no-legend --plain | awk '{ print $1 }' | tr '\n' ' ')" >&2 ;;
        *) die "$name did not boot ($state): $logs/$name.console.log" ;;
    esac
done
for i in "${!hosts[@]}"; do
    j=$(((i + 1) % ${#hosts[@]}))
    deadline=$(($(date +%s) + 30))
    until on "$i" ping -c 1 -W 1 "$(host_ip "$j")" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || die "${hosts[$i]} cannot reach ${hosts[$j]} ($(host_ip "$j"))"
    done
done
say "hosts: ${hosts[*]} booted in $(since "$t") s ($net.0/24 in netns $netns)"

# --- 4. the playbooks -------------------------------------------------------------------

vars_file=$here/fleet-vars.yml
# The client's login, as in fleet-vars.yml (pgwarden_auth_users, pgwarden_bootstrap_roles).
var() { sed -n "s/^$1: *\"\{0,1\}\([^\"]*\)\"\{0,1\} *$/\1/p" "$vars_file"; }
client_user=$(var fleet_client_user)
client_password=$(var fleet_client_password)
client_db=$(var fleet_client_database)
if [ -z "$client_user" ] || [ -z "$client_password" ] || [ -z "$client_db" ]; then
    die "$vars_file: fleet_client_user, fleet_client_password, fleet_client_database?"
fi

inventory=$state_dir/inventory.ini
{
    echo "[pgwarden]"
    for i in "${!hosts[@]}"; do
        echo "${hosts[$i]} ansible_nsenter_pid=$(leader "$i") pgwarden_address=$(host_ip "$i")"
    done
    echo
    echo "[pgwarden:vars]"
    echo "ansible_connection=community.docker.nsenter"
    echo "ansible_python_interpreter=/usr/bin/python3"
} >"$inventory"

export ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0 ANSIBLE_HOST_KEY_CHECKING=0
export ANSIBLE_LOCAL_TEMP=$state_dir/ansible-tmp ANSIBLE_ROLES_PATH=$repo/deploy/ansible/roles
# Runs ansible-playbook (bounded), its output in $logs/$1.log; sets changed
# to the sum of changed= of its PLAY RECAP lines. In the background with a
# wait, so that a signal stops the run at once (the exit trap ends it).
playbook_pid=""
playbook() {
    local name=$1 rc=0
    shift
    timeout "${FLEET_PLAYBOOK_TIMEOUT:-900}" "$ansible_bin/ansible-playbook" -i "$inventory" \
        -e "@$vars_file" "${install_vars[@]}" -e "pgwarden_source_dir=$repo" \
        "$@" >"$logs/$name.log" 2>&1 &
    playbook_pid=$!
    wait "$playbook_pid" || rc=$?
    playbook_pid=""
    if [ "$rc" -ne 0 ]; then
        grep -E -A12 '^(fatal|failed): |^\[ERROR\]|ERROR!' "$logs/$name.log" | head -60 >&2 || true
        die "$name: ansible-playbook exited $rc: $logs/$name.log"
    fi
    changed=$(sed -n '/^PLAY RECAP/,$p' "$logs/$name.log" | grep -o 'changed=[0-9]*' | cut -d= -f2 |
        awk '{ s += $1 } END { print s + 0 }')
}
playbooks=("$repo/deploy/ansible/bootstrap.yml" "$repo/deploy/ansible/site.yml")

# The hosts on which a playbook run's log shows the role waiting for the
# watchdog quorum (not skipping it).
quorum_waited() {
    awk '
        /^TASK \[pgwarden : Wait until the watchdog has a quorum\]/ { f = 1; next }
        /^(TASK|RUNNING HANDLER|PLAY) / { f = 0 }
        f && /^ok: \[/ { sub(/^ok: \[/, ""); sub(/\].*/, ""); print }' "$logs/$1.log" | sort -u | tr '\n' ' '
}

t=$(now)
# A first install host by host, as site.yml goes by default: the first
# host's watchdog is alone, so the role does not wait for a quorum there;
# the second makes one with it, and from then on the role waits for it.
playbook first-run "${playbooks[@]}"
waited=$(quorum_waited first-run)
[ "$waited" = "${hosts[1]} ${hosts[2]} " ] ||
    die "first-run: the quorum was waited for on '${waited}', not on ${hosts[1]} and ${hosts[2]} only ($logs/first-run.log)"
say "first playbook run (bootstrap.yml + site.yml, host by host): $(since "$t") s, changed=$changed; the quorum waited for from the second host on"

# --- 5. checks ------------------------------------------------------------------------------

# Units active, Type=notify (so active means the daemon sent READY=1).
units_active() {
    local i u n=0 show
    for i in "${!hosts[@]}"; do
        for u in "${units[@]}"; do
            show=$(on "$i" systemctl show -p ActiveState -p SubState -p Type "$u" | sort | tr '\n' ' ')
            if [ "$show" = "ActiveState=active SubState=running Type=notify " ]; then
                n=$((n + 1))
            else
                echo "fleet: ${hosts[$i]} $u: $show" >&2
            fi
        done
    done
    echo "$n"
}
# The hosts holding the delegate IP on host0.
vip_holders() {
    local i
    for i in "${!hosts[@]}"; do
        if on "$i" ip -4 -o addr show dev host0 | grep -q " $vip/"; then echo "$i"; fi
    done
}
# One query through ADDR:9999 as the client, from the client address; the
# server's address and whether it is a standby ("10.214.0.11|f").
query() {
    PGPASSWORD=$client_password PGCONNECT_TIMEOUT=5 timeout 20 \
        nsenter --net="/run/netns/$netns" -- psql -X -At -h "$1" -p "$proxy_port" \
        -U "$client_user" -d "$client_db" -c "${2:-SELECT inet_server_addr(), pg_is_in_recovery()}" 2>&1
}
endpoints() {
    local i
    for i in "${!hosts[@]}"; do host_ip "$i"; done
    echo "$vip"
}

n=$(units_active)
[ "$n" -eq 9 ] || die "units: $n of 9 active and ready"
say "units: 9 of 9 active, Type=notify (READY=1 seen), on ${#hosts[@]} hosts"
# systemd's own view of the units' sandboxing (0 = locked down, 10 = none):
# the hardening must stay (stop 23 measured 8.5, 8.6 and 6.4 without it).
scores=""
for u in "${units[@]}"; do
    score=$(on 0 systemd-analyze security --no-pager "$u.service" 2>/dev/null |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    [ -n "$score" ] || die "systemd-analyze security $u: no score"
    awk -v s="$score" 'BEGIN { exit !(s <= 3.0) }' ||
        die "systemd-analyze security $u: exposure $score, above 3.0 (the units lost their hardening?)"
    scores+="$u $score, "
done
say "security: systemd-analyze exposure ${scores%, } (of 10)"

primary_ip=$(host_ip 0)
for ep in $(endpoints); do
    deadline=$(($(date +%s) + 60))
    until [ "$(query "$ep")" = "$primary_ip|f" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || die "a query through $ep:$proxy_port: $(query "$ep")"
        sleep 0.5
    done
done
say "queries: through each proxy and the delegate IP ($vip) reach the primary $primary_ip"

mapfile -t holders < <(vip_holders)
[ "${#holders[@]}" -eq 1 ] || die "delegate IP holders: ${holders[*]:-none}"
say "delegate IP: held by ${hosts[${holders[0]}]} alone"

t=$(now)
playbook noop-run "${playbooks[@]}"
[ "$changed" -eq 0 ] || {
    grep -E '^changed:' "$logs/noop-run.log" | head -20 >&2
    die "the second playbook run changed $changed things ($logs/noop-run.log)"
}
say "no-op playbook run (bootstrap.yml + site.yml, serial 1): $(since "$t") s, changed=0"

# A change for the proxies and the watchdogs only (proxy.max_client_connections,
# watchdog.metrics_listen): site.yml restarts those two, host by host with the
# leader's host last, waits for the quorum after each watchdog, and leaves
# every monitor running.
lead0=${holders[0]}
declare -A pid0=()
for i in "${!hosts[@]}"; do
    for u in "${units[@]}"; do pid0[$i.$u]=$(on "$i" systemctl show -p MainPID --value "$u"); done
done
t=$(now)
playbook change-run "$repo/deploy/ansible/site.yml" -e pgwarden_proxy_max_client_connections=1001 \
    -e '{"pgwarden_extra_config": {"watchdog": {"metrics_listen": "127.0.0.1:9933"}}}'
change_s=$(since "$t")
for i in "${!hosts[@]}"; do
    for u in "${units[@]}"; do
        pid=$(on "$i" systemctl show -p MainPID --value "$u")
        case "$u" in
            pgwarden-monitor) [ "$pid" = "${pid0[$i.$u]}" ] ||
                die "change-run: $u on ${hosts[$i]} was restarted (PID ${pid0[$i.$u]} -> $pid); its inputs did not change" ;;
            *) [ "$pid" != "${pid0[$i.$u]}" ] ||
                die "change-run: $u on ${hosts[$i]} was not restarted (PID $pid); its part of the config changed" ;;
        esac
    done
done
# The hosts share this machine's monotonic clock: the leader's watchdog must
# have started last.
last=-1 last_start=0
for i in "${!hosts[@]}"; do
    start=$(on "$i" systemctl show -p ExecMainStartTimestampMonotonic --value pgwarden-watchdog)
    if [ "$start" -gt "$last_start" ]; then last=$i last_start=$start; fi
done
[ "$last" = "$lead0" ] ||
    die "change-run: ${hosts[$last]}'s watchdog restarted last, not the leader ${hosts[$lead0]}'s"
waited=$(quorum_waited change-run)
[ "$waited" = "${hosts[*]} " ] ||
    die "change-run: the quorum was waited for on '${waited}', not on all ${#hosts[@]} hosts ($logs/change-run.log)"
deadline=$(($(date +%s) + 30))
until mapfile -t holders < <(vip_holders) && [ "${#holders[@]}" -eq 1 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "change-run: delegate IP holders afterwards: ${holders[*]:-none}"
    sleep 0.2
done
say "change run (proxy + watchdog keys): $change_s s; proxies and watchdogs restarted, monitors not; the quorum waited for after each watchdog; the leader ${hosts[$lead0]} last (the delegate IP is now on ${hosts[${holders[0]}]})"

# Restarting the leader's monitor while a client queries through its proxy.
leader_i=${holders[0]}
loop_out=$state_dir/client-loop
rm -f "$loop_out".*
(
    ok=0 failed=0
    end=$(($(date +%s) + 60))
    for _ in $(seq 600); do
        [ -e "$loop_out.stop" ] || [ "$(date +%s)" -ge "$end" ] && break
        if r=$(query "$(host_ip "$leader_i")" "SELECT 1") && [ "$r" = 1 ]; then
            ok=$((ok + 1))
        else
            failed=$((failed + 1))
            echo "$(date +%T.%N) $r" >>"$loop_out.errors"
        fi
        sleep 0.05
    done
    echo "$ok $failed" >"$loop_out.done"
) &
loop_pid=$!
sleep 2
t=$(now)
on "$leader_i" systemctl restart pgwarden-monitor ||
    die "systemctl restart pgwarden-monitor on ${hosts[$leader_i]} failed"
restart_s=$(since "$t")
sleep 3
touch "$loop_out.stop"
wait "$loop_pid" || true
read -r ok failed <"$loop_out.done"
if [ "$failed" -ne 0 ] || [ "$ok" -lt 10 ]; then
    cat "$loop_out.errors" >&2 2>/dev/null || true
    die "restarting pgwarden-monitor on ${hosts[$leader_i]}: $failed of $((ok + failed)) client queries failed"
fi
say "monitor restart on ${hosts[$leader_i]} (the leader, ${restart_s} s to active): $ok client queries through its proxy, 0 failed"

# Failover: the primary's PostgreSQL killed (SIGKILL to all its processes).
t=$(now)
on 0 systemctl kill -s SIGKILL "$pg_unit"
declare -A switched=()
new_primary=""
deadline=$(($(date +%s) + 90))
while [ "${#switched[@]}" -lt 4 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "failover: after 90 s, only ${!switched[*]} reach a new primary"
    for ep in $(endpoints); do
        [ -z "${switched[$ep]:-}" ] || continue
        r=$(query "$ep") || continue
        case "$r" in
            "$primary_ip|"* | *"|t") ;;
            "$net".*"|f")
                [ -z "$new_primary" ] || [ "$new_primary" = "${r%|f}" ] ||
                    die "failover: $ep reaches ${r%|f}, another proxy $new_primary"
                new_primary=${r%|f}
                switched[$ep]=$(since "$t")
                ;;
        esac
    done
    sleep 0.1
done
failover_s=$(since "$t")
say "failover: $pg_unit killed on ${hosts[0]}; all 3 proxies and the delegate IP reach the new primary $new_primary after $failover_s s (each: $(for ep in $(endpoints); do printf '%s %ss ' "$ep" "${switched[$ep]}"; done))"

# A daemon killed 6 times in a row (each time once it is back) is still
# restarted: StartLimitIntervalSec=0 (systemd's default gives up after 5
# starts in 10 s).
mapfile -t holders < <(vip_holders)
victim=$(((holders[0] + 1) % ${#hosts[@]}))
unit=pgwarden-proxy
show() { on "$victim" systemctl show -p "$1" --value "$unit"; }
restarts0=$(show NRestarts)
t=$(now)
for k in 1 2 3 4 5 6; do
    pid=$(show MainPID)
    [ "$pid" -gt 0 ] || die "$unit on ${hosts[$victim]} has no main PID (kill $k)"
    on "$victim" kill -KILL "$pid"
    deadline=$(($(date +%s) + 30))
    until [ "$(show ActiveState)" = active ] && [ "$(show MainPID)" != "$pid" ] && [ "$(show MainPID)" -gt 0 ]; do
        [ "$(date +%s)" -lt "$deadline" ] ||
            die "$unit on ${hosts[$victim]} not back 30 s after kill $k: $(on "$victim" systemctl status --no-pager "$unit" | head -5)"
        sleep 0.1
    done
done
restarts=$(($(show NRestarts) - restarts0))
[ "$restarts" -eq 6 ] || die "$unit on ${hosts[$victim]}: NRestarts went up by $restarts, not 6"
say "restarts: $unit on ${hosts[$victim]} killed 6 times in a row, restarted 6 times in $(since "$t") s (NRestarts $restarts0 -> $((restarts0 + restarts)))"

n=$(units_active)
[ "$n" -eq 9 ] || die "units at the end: $n of 9 active and ready"
mapfile -t holders < <(vip_holders)
[ "${#holders[@]}" -eq 1 ] || die "delegate IP holders at the end: ${holders[*]:-none}"
result="fleet: hosts=${#hosts[@]} units_active=$n vip_holders=${#holders[@]} failover=ok idempotent=ok restarts=ok"
# Torn down before the last line, so that it is the last.
if [ "$keep" -eq 0 ]; then
    trap - EXIT
    teardown
fi
say "total $(since "$t_start") s"
echo "$result"
