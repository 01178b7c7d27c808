#!/usr/bin/env bash
# Checks the pgwarden Ansible role and playbook on the control machine,
# without any host: needs ansible-core (pip install ansible-core) and a
# built pgwardenctl (cargo build --bins). Not part of CI or the test suite.
#
#   deploy/ansible/check.sh [INVENTORY [VARS_FILE [ANSIBLE_PLAYBOOK_ARGS...]]]
#
# e.g. deploy/ansible/check.sh inventory.ini group_vars/pgwarden/vault.yml --ask-vault-pass
#
# 1. ansible-playbook --syntax-check site.yml bootstrap.yml
# 2. renders every host's files (roles/pgwarden/tests/render.yml) for
#    INVENTORY (default inventory.example.ini) with the variables of
#    VARS_FILE (default vault.example.yml) into a temp dir;
# 3. loads each rendered pgwarden.toml with pgwardenctl, which validates the
#    whole file before it connects: a valid config must end in "cannot reach
#    pgwarden-monitor" (no monitor runs at the socket path it is given), a
#    bad one prints "invalid config: <key>...";
# 4. checks that every node lists the same watchdog members and backends;
# 5. runs ansible-lint when it is installed.
#
# PGWARDENCTL=path picks the binary (default target/debug, else
# target/release); KEEP=1 keeps the rendered files.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$here"

inventory=${1:-inventory.example.ini}
vars_file=${2:-vault.example.yml}
shift $(($# < 2 ? $# : 2))

command -v ansible-playbook >/dev/null || {
    echo "check.sh: ansible-playbook not found (pip install ansible-core)" >&2
    exit 2
}
ctl=${PGWARDENCTL:-}
if [ -z "$ctl" ]; then
    for c in "$root/target/debug/pgwardenctl" "$root/target/release/pgwardenctl"; do
        if [ -x "$c" ]; then ctl=$c; break; fi
    done
fi
[ -n "$ctl" ] && [ -x "$ctl" ] || {
    echo "check.sh: no pgwardenctl binary (cargo build --bins, or PGWARDENCTL=path)" >&2
    exit 2
}
ctl=$(cd "$(dirname "$ctl")" && pwd)/$(basename "$ctl")

# The operator's own PGWARDEN_* overrides must not leak into the check.
while read -r var; do unset "$var"; done < <(env | sed -n 's/^\(PGWARDEN_[A-Za-z0-9_]*\)=.*/\1/p')
export ANSIBLE_ROLES_PATH="$here/roles" ANSIBLE_RETRY_FILES_ENABLED=0

out=$(mktemp -d "${TMPDIR:-/tmp}/pgwarden-ansible-check.XXXXXX")
if [ "${KEEP:-0}" = 1 ]; then
    echo "rendered files kept in $out"
else
    trap 'rm -rf "$out"' EXIT
fi

echo "== syntax check: site.yml, bootstrap.yml"
ansible-playbook -i "$inventory" -e ansible_connection=local --syntax-check site.yml
ansible-playbook -i "$inventory" -e ansible_connection=local --syntax-check bootstrap.yml

echo "== render every host of $inventory (variables: $vars_file)"
# Its own connection: everything runs here, whatever connection the
# inventory sets for the hosts (extra vars win over inventory variables).
ansible-playbook -i "$inventory" -e "@$vars_file" -e ansible_connection=local \
    -e "pgwarden_render_dir=$out" -e "pgwarden_ctl_dir=$(dirname "$ctl")" \
    "$@" roles/pgwarden/tests/render.yml

echo "== validate each rendered config with $ctl"
fail=0
hosts=0
for dir in "$out"/*/; do
    host=$(basename "$dir")
    hosts=$((hosts + 1))
    set +e
    msg=$(PGWARDEN_NODE__RUNTIME_DIR="$out/no-daemons-here" \
        "$ctl" --config "$dir/pgwarden.toml" status 2>&1)
    rc=$?
    set -e
    if [ "$rc" -eq 2 ] && [[ "$msg" == *"cannot reach pgwarden-monitor"* ]]; then
        echo "$host: config valid ($msg)"
    else
        echo "$host: FAILED (exit $rc): $msg" >&2
        fail=1
    fi
    for f in "$dir"/*; do
        case "$(stat -c %a "$f")" in
            *[4-7]) echo "$host: $(basename "$f") is world-readable" >&2; fail=1 ;;
        esac
    done
done
[ "$hosts" -gt 0 ] || { echo "check.sh: nothing rendered" >&2; exit 1; }

echo "== same watchdog members and backends on every node"
if python3 -c 'import tomllib' 2>/dev/null; then
    python3 - "$out" <<'EOF' || fail=1
import pathlib, sys, tomllib
seen = {}
for path in sorted(pathlib.Path(sys.argv[1]).glob("*/pgwarden.toml")):
    c = tomllib.loads(path.read_text())
    w = c["watchdog"]
    members = sorted(w["peers"] + [w["advertise"]])
    seen[path.parent.name] = (members, c["backends"], w["enabled"])
    print(f"{path.parent.name}: node {c['node']['name']}, watchdog {'on' if w['enabled'] else 'off'}, "
          f"advertise {w['advertise']}, peers {w['peers']}, "
          f"backends {[b['name'] + '=' + b['host'] + ':' + str(b.get('port', 5432)) for b in c['backends']]}")
if len({repr(v) for v in seen.values()}) != 1:
    sys.exit("the nodes disagree on the watchdog members, the backends or watchdog.enabled")
EOF
else
    echo "(skipped: needs python3 >= 3.11 for tomllib)"
fi

if command -v ansible-lint >/dev/null; then
    echo "== ansible-lint"
    ansible-lint site.yml bootstrap.yml roles/pgwarden roles/pgwarden_bootstrap || fail=1
else
    echo "== ansible-lint: not installed, skipped"
fi

if [ "$fail" -ne 0 ]; then
    echo "check.sh: FAILED" >&2
    exit 1
fi
echo "check.sh: OK ($hosts hosts)"
