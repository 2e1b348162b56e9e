#!/usr/bin/env bash
# Provide WasmEdge 0.14.x without changing the system permanently.
#
#   build/wasmedge.sh [ROOT]        ROOT defaults to $WASMEDGE_ROOT, else <repo>/.wasmedge
#
# Prints the path of a working `wasmedge` executable (ROOT/bin/wasmedge) on stdout as
# its last line; everything else goes to stderr, so `WASMEDGE=$(build/wasmedge.sh)`
# works.
#
# * Debian 13+ (apt has a `wasmedge` candidate): `apt-get install -y wasmedge`, and
#   ROOT/bin/wasmedge becomes a symlink to /usr/bin/wasmedge.
# * Debian 12: the Debian 13 ("trixie") packages are fetched with `apt-get download`
#   through a *private* apt configuration (its own sources, pin, lists and cache in a
#   temporary folder, removed by a trap), so /etc/apt and /var/lib/apt are never
#   touched and nothing can be upgraded from trixie. The .debs are cached in
#   ROOT/debs (re-runs are offline), unpacked with `dpkg -x` into ROOT/sysroot, and
#   ROOT/bin/wasmedge runs them through ROOT/sysroot's own dynamic loader.
#
# Idempotent: a working ROOT/bin/wasmedge is left alone. WASMEDGE_FORCE=1 rebuilds
# the sysroot (from the cached .debs when they are there).
set -euo pipefail

log() { printf 'wasmedge.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# Turn signals into an exit so the EXIT traps below always clean up.
trap 'exit 130' INT
trap 'exit 143' TERM HUP

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
root=${1:-${WASMEDGE_ROOT:-$repo/.wasmedge}}
mkdir -p "$root"
root=$(cd "$root" && pwd)
wrapper=$root/bin/wasmedge
sysroot=$root/sysroot
debs=$root/debs
mirror=${WASMEDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=${WASMEDGE_DEBIAN_SUITE:-trixie}
keyring=${WASMEDGE_DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}

# The runtime closure of /usr/bin/wasmedge in trixie (checked with the loader's
# --list below). libicu76 is not needed: trixie's libxml2 2.9.14 does not link it.
packages=(wasmedge libwasmedge0 libllvm19 libfmt10 libspdlog1.15 libstdc++6 libgcc-s1
          libc6 libzstd1 libz3-4 libffi8 libedit2 libxml2 libtinfo6 zlib1g libbsd0
          libmd0 liblzma5)

# "ARGV0 version 0.14.1" on the first line: WasmEdge prints its argv[0] there, which
# is "/usr/bin/wasmedge" when run by full path (Debian 13's own package), so only the
# words after it count. (No `| grep -q`: with pipefail, grep leaving early can fail
# the pipeline through SIGPIPE.)
is_0_14() {
    local v
    v=$("$1" --version 2>/dev/null) || return 1
    v=${v%%$'\n'*}
    [[ $v == *" version 0.14."* ]]
}
works() { [[ -x $wrapper ]] && is_0_14 "$wrapper"; }

finish() {
    works || die "$wrapper does not run"
    local version
    version=$("$wrapper" --version)
    log "${version%%$'\n'*}"
    printf '%s\n' "$wrapper"
    exit 0
}

if [[ ${WASMEDGE_FORCE:-0} != 1 ]] && works; then
    log "already provisioned"
    finish
fi
mkdir -p "$root/bin"

# --- Debian 13+ (or anything whose apt offers wasmedge 0.14): the real package ------
native_install() {
    [[ -x /usr/bin/wasmedge ]] && is_0_14 /usr/bin/wasmedge && return 0
    local candidate
    candidate=$(apt-cache policy wasmedge 2>/dev/null | awk '/Candidate:/ {print $2}')
    [[ -n $candidate && $candidate != "(none)" && $candidate == 0.14.* ]] || return 1
    log "installing wasmedge $candidate from the system's apt sources"
    if [[ $(id -u) == 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wasmedge >&2
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wasmedge >&2
    fi
}
if native_install; then
    ln -sfn /usr/bin/wasmedge "$wrapper"
    finish
fi

# --- Debian 12: private copy of the trixie packages ---------------------------------
arch=$(dpkg --print-architecture)

have_debs() {
    local p
    for p in "${packages[@]}"; do
        compgen -G "$debs/${p}_*_${arch}.deb" >/dev/null || return 1
    done
}

download_debs() {
    local tmp opts p
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/wasmedge-apt.XXXXXX")
    # shellcheck disable=SC2064  # expand $tmp now: the trap must remove this folder
    trap "rm -rf '$tmp'" EXIT
    mkdir -p "$tmp/sources.list.d" "$tmp/preferences.d" "$tmp/lists/partial" \
             "$tmp/cache/archives/partial" "$tmp/dl"
    cat >"$tmp/sources.list.d/$suite.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite
Components: main
Architectures: $arch
Signed-By: $keyring
EOF
    # Belt and braces: this configuration is only ever used by the commands below,
    # but should it leak, nothing from $suite could be installed or upgraded.
    printf 'Package: *\nPin: release n=%s\nPin-Priority: -1\n' "$suite" \
        >"$tmp/preferences.d/$suite.pref"
    opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$tmp/sources.list.d"
          -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=$tmp/preferences.d"
          -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache"
          -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
          -o "APT::Get::List-Cleanup=0")
    # apt drops to the _apt user for downloads; it cannot write into a root-owned
    # private folder, so let it run as the caller instead (no warning, same result).
    [[ $(id -u) == 0 ]] && opts+=(-o "APT::Sandbox::User=root")
    log "fetching the $suite package index (private apt state in $tmp)"
    apt-get "${opts[@]}" -q update >&2
    log "downloading ${#packages[@]} packages from $suite into $debs"
    (cd "$tmp/dl" && apt-get "${opts[@]}" -q download "${packages[@]/%//$suite}" >&2)
    mkdir -p "$debs"
    for p in "$tmp"/dl/*.deb; do mv -f "$p" "$debs/"; done
    rm -rf "$tmp"
    trap - EXIT
}

if ! have_debs; then
    download_debs
    have_debs || die "some packages are missing from $debs"
else
    log "using cached packages in $debs"
fi

# Unpack into a fresh folder and swap it in, so an interrupted run never leaves a
# half-unpacked sysroot behind the wrapper.
staging=$(mktemp -d "$root/sysroot.new.XXXXXX")
trap 'rm -rf "$staging"' EXIT
chmod 0755 "$staging"
log "unpacking into $sysroot"
for p in "${packages[@]}"; do
    # The newest version when several versions of one package are cached.
    deb=$(printf '%s\n' "$debs/${p}_"*"_${arch}.deb" | sort -V | tail -n1)
    dpkg -x "$deb" "$staging"
done

# Find the loader and the library folders as the packages lay them out (trixie is
# usr-merged: everything is under usr/, and usr/lib64/ld-linux-x86-64.so.2 is a
# symlink to ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2; older layouts put libc6
# under lib/).
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null || echo "$(uname -m)-linux-gnu")
loader=
for cand in "$staging/usr/lib/$multiarch"/ld-linux*.so.* "$staging/lib/$multiarch"/ld-linux*.so.*; do
    # The real file, not the usr/lib64 or lib64 compatibility symlink.
    if [[ -f $cand && ! -L $cand ]]; then loader=${cand#"$staging/"}; break; fi
done
[[ -n $loader ]] || die "no dynamic loader found in the unpacked libc6"
libpath_rel=("usr/lib/$multiarch" "lib/$multiarch")

rm -rf "$sysroot.old"
[[ -e $sysroot ]] && mv "$sysroot" "$sysroot.old"
mv "$staging" "$sysroot"
trap - EXIT
rm -rf "$sysroot.old"

libpath=
for rel in "${libpath_rel[@]}"; do
    if [[ -d $sysroot/$rel ]]; then libpath+=${libpath:+:}$sysroot/$rel; fi
done
# Every library must come from the sysroot: a fallback to the host's older libc or
# libstdc++ would fail in confusing ways later.
if listing=$("$sysroot/$loader" --library-path "$libpath" --list "$sysroot/usr/bin/wasmedge" 2>&1); then
    outside=$(printf '%s\n' "$listing" | awk -v r="$sysroot/" '/=>/ && index($3, r) != 1 {print}')
    [[ -z $outside ]] || die "libraries resolved outside $sysroot:"$'\n'"$outside"
else
    die "the loader cannot resolve wasmedge's libraries:"$'\n'"$listing"
fi

cat >"$wrapper.tmp" <<EOF
#!/bin/sh
# WasmEdge from Debian $suite packages, run through their own loader.
# Generated by build/wasmedge.sh; re-run it if this folder was moved.
exec '$sysroot/$loader' --library-path '$libpath' --argv0 wasmedge '$sysroot/usr/bin/wasmedge' "\$@"
EOF
chmod 0755 "$wrapper.tmp"
mv -f "$wrapper.tmp" "$wrapper"
finish
