#!/usr/bin/env bash
# Install edgesync on a machine without network access (air-gapped), from a copy of
# dist/edgesync.pyz and this directory (packaging/: this script and systemd/).
#
#   sudo ./install-offline.sh [OPTIONS] [PATH/TO/edgesync.pyz]
#
# What it does, and nothing else (no package manager, no download):
#   * checks python3 (CPython 3.11 or newer, the one the zipapp was built for);
#   * /opt/edgesync/edgesync.pyz, unpacked once into /opt/edgesync/shiv (SHIV_ROOT)
#     and byte-compiled, so the first start is fast and nothing writes there later;
#   * /usr/local/bin/edgesync, a wrapper: exec python3 /opt/edgesync/edgesync.pyz "$@";
#   * the system user and group "edgesync";
#   * /var/lib/edgesync (serve's data) and /var/lib/edgesync-agent (the agent's);
#   * /etc/edgesync/serve.env (0640) and agent.env (0600), kept if they exist;
#   * the systemd units edgesync-serve.service and edgesync-agent.service (neither is
#     enabled: `systemctl enable --now edgesync-agent` after editing agent.env).
#
# Running it again upgrades the zipapp and the units and keeps the env files.
#
# Options:
#   --prefix DIR    install under DIR (DIR/opt/edgesync, DIR/usr/local/bin, DIR/etc,
#                   DIR/var/lib) and make the installed files refer to those paths:
#                   a relocated install that runs in place. No user is created and
#                   no ownership changed. Must be an absolute path.
#   DESTDIR=DIR     (environment) stage the files under DIR while they refer to the
#                   final paths (for building a package or an image); no user is
#                   created, no ownership changed, systemd is not reloaded.
#   --no-systemd    do not install the systemd units.
#   --python PATH   the interpreter to run edgesync with (default: python3).
#   -h, --help      this text.
set -euo pipefail

PROG=${0##*/}
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
USER_NAME=edgesync
MIN_PYTHON=(3 11)

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
say() { printf '%s: %s\n' "$PROG" "$*"; }

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

prefix=""
systemd=1
python=python3
pyz=""
while (($#)); do
    case "$1" in
    --prefix)
        (($# >= 2)) || die "--prefix needs a directory"
        prefix=$2
        shift 2
        ;;
    --prefix=*)
        prefix=${1#*=}
        shift
        ;;
    --no-systemd)
        systemd=0
        shift
        ;;
    --python)
        (($# >= 2)) || die "--python needs a path"
        python=$2
        shift 2
        ;;
    --python=*)
        python=${1#*=}
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    --)
        shift
        break
        ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
        [[ -z "$pyz" ]] || die "more than one zipapp given: $pyz and $1"
        pyz=$1
        shift
        ;;
    esac
done
if (($#)); then
    [[ -z "$pyz" && $# -eq 1 ]] || die "more than one zipapp given"
    pyz=$1
fi

destdir=${DESTDIR:-}
# Paths go into sed replacements and unit files: keep them plain.
for path in "$prefix" "$destdir"; do
    [[ "$path" != *[[:space:]\#\&\\\"\'\$]* ]] || die "unsupported characters in path: $path"
done
if [[ -n "$prefix" ]]; then
    [[ "$prefix" == /* ]] || die "--prefix must be an absolute path: $prefix"
    prefix=${prefix%/}
fi
if [[ -n "$destdir" ]]; then
    [[ "$destdir" == /* ]] || die "DESTDIR must be an absolute path: $destdir"
    destdir=${destdir%/}
fi
# A staged or relocated install touches no system state (users, ownership, systemd).
system_install=1
if [[ -n "$prefix" || -n "$destdir" ]]; then
    system_install=0
elif ((EUID != 0)); then
    die "run as root for a system install (or use --prefix DIR / DESTDIR=DIR)"
fi

# -- what to install ------------------------------------------------------------------

if [[ -z "$pyz" ]]; then
    for candidate in "$SCRIPT_DIR/edgesync.pyz" "$SCRIPT_DIR/../dist/edgesync.pyz"; do
        if [[ -f "$candidate" ]]; then
            pyz=$candidate
            break
        fi
    done
    [[ -n "$pyz" ]] || die "no edgesync.pyz next to $PROG: give its path as an argument"
fi
[[ -f "$pyz" && -r "$pyz" ]] || die "cannot read the zipapp $pyz"
units_src="$SCRIPT_DIR/systemd"
if ((systemd)); then
    for unit in edgesync-serve.service edgesync-agent.service; do
        [[ -f "$units_src/$unit" ]] || die "missing $units_src/$unit (or use --no-systemd)"
    done
fi

# -- the interpreter ------------------------------------------------------------------

command -v "$python" >/dev/null 2>&1 || die "$python not found: edgesync needs CPython ${MIN_PYTHON[0]}.${MIN_PYTHON[1]}+"
if ! "$python" -c "import sys; sys.exit(sys.version_info < (${MIN_PYTHON[0]}, ${MIN_PYTHON[1]}))"; then
    die "$python is $("$python" --version 2>&1); edgesync needs ${MIN_PYTHON[0]}.${MIN_PYTHON[1]} or newer"
fi
# The real interpreter (not a shim or a symlink chain that may change under us).
python_path=$("$python" -c 'import sys; print(sys.executable)')
[[ -x "$python_path" ]] || die "cannot resolve the interpreter behind $python"
say "python: $python_path ($("$python_path" --version 2>&1))"
if ((systemd)) && [[ "$python_path" == /home/* || "$python_path" == /root/* ]]; then
    say "warning: $python_path is under a home directory, which the units hide (ProtectHome=yes); use --python /usr/bin/python3"
fi

# -- layout ---------------------------------------------------------------------------

# Paths as the installed files name them ...
opt_dir="$prefix/opt/edgesync"
bin_dir="$prefix/usr/local/bin"
etc_dir="$prefix/etc/edgesync"
serve_data="$prefix/var/lib/edgesync"
agent_data="$prefix/var/lib/edgesync-agent"
unit_dir="$prefix/etc/systemd/system"
shiv_root="$opt_dir/shiv"
# ... and where they are written.
d() { printf '%s%s' "$destdir" "$1"; }

owner_args=()
if ((system_install)); then
    if ! getent group "$USER_NAME" >/dev/null; then
        groupadd --system "$USER_NAME"
        say "created group $USER_NAME"
    fi
    if ! getent passwd "$USER_NAME" >/dev/null; then
        useradd --system --gid "$USER_NAME" --home-dir /var/lib/edgesync --no-create-home \
            --shell /usr/sbin/nologin --comment "edgesync" "$USER_NAME"
        say "created user $USER_NAME"
    fi
    owner_args=(-o "$USER_NAME" -g "$USER_NAME")
fi

install -d -m 0755 "$(d "$opt_dir")" "$(d "$bin_dir")"
install -d -m 0755 "$(d "$etc_dir")"
install -d -m 0700 "${owner_args[@]}" "$(d "$serve_data")" "$(d "$agent_data")"

# -- the zipapp, unpacked and compiled ---------------------------------------------------

target="$(d "$opt_dir")/edgesync.pyz"
# Replace by rename: a running edgesync keeps reading the file it opened.
install -m 0644 "$pyz" "$target.new"
mv -f "$target.new" "$target"
say "installed $target"

# shiv unpacks into SHIV_ROOT/edgesync.pyz_<build id>/ on the first run; doing it now
# (as the installing user) means the services only ever read it. Offline: the
# zipapp carries every dependency.
install -d -m 0755 "$(d "$shiv_root")"
SHIV_ROOT="$(d "$shiv_root")" "$python_path" "$target" --version >/dev/null ||
    die "the zipapp does not run with $python_path"
if ! "$python_path" -m compileall -q -j 0 "$(d "$shiv_root")" >/dev/null 2>&1; then
    say "warning: some files in $(d "$shiv_root") did not byte-compile (they are compiled in memory when used)"
fi
# Every part must load with this interpreter, the native ones (wasmtime, libsql) too:
# a zipapp built for another CPython version or machine fails here, not at first start.
if ! SHIV_ROOT="$(d "$shiv_root")" SHIV_INTERPRETER=1 "$python_path" -I "$target" \
    -c "import edgesync.cli, appliance.app, agent.main, wasmtime, libsql" >/dev/null; then
    die "the zipapp's modules do not load with $python_path (error above); is it built for this machine? (make zipapp PLATFORM=$(uname -m))"
fi
build_dirs=("$(d "$shiv_root")"/edgesync.pyz_*/)
say "unpacked into $(d "$shiv_root") (${#build_dirs[@]} build(s) present; older ones can be removed once no edgesync runs them)"

# -- the command ---------------------------------------------------------------------

wrapper="$(d "$bin_dir")/edgesync"
cat >"$wrapper.new" <<EOF
#!/bin/sh
# edgesync, installed by install-offline.sh. The zipapp's dependencies were unpacked
# into SHIV_ROOT at install time.
SHIV_ROOT="\${SHIV_ROOT:-$shiv_root}"
export SHIV_ROOT
exec "$python_path" "$opt_dir/edgesync.pyz" "\$@"
EOF
chmod 0755 "$wrapper.new"
mv -f "$wrapper.new" "$wrapper"
say "installed $wrapper"

# -- configuration (never overwritten) --------------------------------------------------

write_env_file() { # path mode group content
    local path=$1 mode=$2 group=$3 content=$4
    if [[ -e "$path" ]]; then
        say "kept $path"
        return
    fi
    (umask 077 && printf '%s\n' "$content" >"$path.new")
    chmod "$mode" "$path.new"
    if ((system_install)); then
        chown "root:$group" "$path.new"
    fi
    mv -f "$path.new" "$path"
    say "created $path (mode $mode): edit it"
}

write_env_file "$(d "$etc_dir")/serve.env" 0640 "$USER_NAME" "\
# edgesync serve (edgesync-serve.service). Every option of \`edgesync serve --help\`
# can be set here as EDGESYNC_SERVE_<OPTION>, e.g. EDGESYNC_SERVE_PORT=8443.
EDGESYNC_SERVE_HOST=0.0.0.0
EDGESYNC_SERVE_PORT=8080
# Operators' API token (16+ characters). Unset: generated into
# $serve_data/admin-token on the first start.
#EDGESYNC_ADMIN_TOKEN=
# What nodes use to reach this server (plans and download URLs are built from it).
#EDGESYNC_PUBLIC_URL=https://edgesync.example.com
# Metadata store; default: SQLite in the data dir. CockroachDB or PostgreSQL:
#DATABASE_URL=postgresql://edgesync:PASSWORD@db.example.com:26257/edgesync?sslmode=verify-full
# Artifact store; default: a folder in the data dir. MinIO or S3:
#MINIO_ENDPOINT=minio.example.com:9000
#MINIO_ACCESS_KEY=
#MINIO_SECRET_KEY=
#MINIO_SECURE=true
#EDGESYNC_ARTIFACT_DELIVERY=direct
# TLS (the files must be readable by the edgesync user):
#EDGESYNC_SERVE_TLS_CERT=/etc/edgesync/tls/server.crt
#EDGESYNC_SERVE_TLS_KEY=/etc/edgesync/tls/server.key"

write_env_file "$(d "$etc_dir")/agent.env" 0600 root "\
# edgesync agent (edgesync-agent.service). Every option of \`edgesync agent --help\`
# can be set here as EDGESYNC_AGENT_<OPTION>, e.g. EDGESYNC_AGENT_REGION=eu.
# The control plane, and the enrollment token an admin created with
# \`edgesync token create\` (needed on the first start only).
EDGESYNC_SERVER=https://edgesync.example.com
EDGESYNC_ENROLLMENT_TOKEN=
#EDGESYNC_AGENT_NAME=
#EDGESYNC_AGENT_REGION=
# Local function gateway (HOST:PORT).
#EDGESYNC_AGENT_GATEWAY=127.0.0.1:8700
# CA bundle for a control plane whose certificate a private CA signed.
#EDGESYNC_AGENT_CA_FILE=/etc/edgesync/ca.pem"

# -- systemd ---------------------------------------------------------------------------

if ((systemd)); then
    install -d -m 0755 "$(d "$unit_dir")"
    for unit in edgesync-serve.service edgesync-agent.service; do
        if [[ -n "$prefix" ]]; then
            # The units name the default paths; point them into the prefix.
            sed -E "s#(^|[ =])(/usr/local/bin/edgesync|/etc/edgesync|/var/lib/edgesync|/opt/edgesync)#\1${prefix}\2#g" \
                "$units_src/$unit" >"$(d "$unit_dir")/$unit.new"
        else
            cp "$units_src/$unit" "$(d "$unit_dir")/$unit.new"
        fi
        chmod 0644 "$(d "$unit_dir")/$unit.new"
        mv -f "$(d "$unit_dir")/$unit.new" "$(d "$unit_dir")/$unit"
        say "installed $(d "$unit_dir")/$unit"
    done
    if ((system_install)) && [[ -d /run/systemd/system ]]; then
        systemctl daemon-reload
        say "systemd reloaded; start with: systemctl enable --now edgesync-serve (or edgesync-agent)"
    fi
fi

say "done: $(d "$bin_dir")/edgesync --version"
