#!/usr/bin/env bash
# Build the example functions in examples/ into examples/build/ (or $1).
#
#   build/build_examples.sh [OUTDIR]
#
# * examples/*.wat      -> OUTDIR/NAME.wasm  (wasmtime.wat2wasm from .venv, $PYTHON
#                                            or python3, else wabt's wat2wasm)
# * examples/*/main.c   -> OUTDIR/NAME.wasm  (clang --target=wasm32-wasi + wasi-libc)
#
# Installs what the C build needs with apt when it is missing (root or sudo): clang,
# lld (wasm-ld), wasi-libc and the wasm32 compiler-rt builtins matching clang's major
# version. Set EXAMPLES_NO_APT=1 to skip that step (the C examples are then skipped
# when no wasm32-wasi toolchain is found). WASI_SYSROOT=DIR uses a wasi-sdk style
# sysroot instead of Debian's multiarch wasi-libc (/usr/include/wasm32-wasi,
# /usr/lib/wasm32-wasi, which Debian's clang finds by itself).
set -euo pipefail

log() { printf 'build_examples.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=$repo/examples
out=${1:-$src/build}
mkdir -p "$out"
# The first interpreter that has the wasmtime package: the repo's venv (make install)
# before $PYTHON, which .ci/run sets to the bare system interpreter.
python=
for cand in "${WAT_PYTHON:-}" "$repo/.venv/bin/python" "${PYTHON:-}" python3; do
    if [[ -n $cand ]] && "$cand" -c 'import wasmtime' 2>/dev/null; then python=$cand; break; fi
done

as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }
installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

apt_install() {
    local missing=() p
    for p in "$@"; do installed "$p" || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    log "apt-get install ${missing[*]}"
    # An install of a package the local index does not know yet needs a fresh index.
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
        as_root apt-get update -q >&2
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
    fi
}

cc=${CC_WASM:-clang}
toolchain() {
    [[ ${EXAMPLES_NO_APT:-0} == 1 ]] || apt_install clang lld wasi-libc
    command -v "$cc" >/dev/null || return 1
    # The builtins archive must match clang's own version (Debian 12: clang 14 ->
    # libclang-rt-14-dev-wasm32, which the unversioned libclang-rt-dev-wasm32 also
    # pulls in); asking by version keeps CC_WASM=clang-19 working too.
    local major
    major=$("$cc" -dumpversion | cut -d. -f1)
    [[ ${EXAMPLES_NO_APT:-0} == 1 ]] || apt_install "libclang-rt-$major-dev-wasm32"
    # wasm-ld comes from lld; Debian's clang finds /usr/bin/wasm-ld (lld-N provides
    # the wasm-ld-N alternative, lld the unversioned name).
    command -v wasm-ld >/dev/null || command -v "wasm-ld-$major" >/dev/null
}

# Converts WAT files to OUTDIR/NAME.wasm, in one Python process (each start of the
# interpreter with wasmtime costs ~0.15 s).
wat2wasm_all() {
    if [[ -n $python ]]; then
        "$python" - "$out" "$@" <<'EOF'
import os
import sys

import wasmtime

out = sys.argv[1]
for src in sys.argv[2:]:
    dst = os.path.join(out, os.path.basename(src)[: -len(".wat")] + ".wasm")
    with open(src, encoding="utf-8") as f:
        binary = wasmtime.wat2wasm(f.read())
    with open(dst + ".tmp", "wb") as f:
        f.write(binary)
    os.replace(dst + ".tmp", dst)
    print(f"build_examples.sh: built {dst}", file=sys.stderr)
EOF
    elif command -v wat2wasm >/dev/null; then
        local wat wasm
        for wat in "$@"; do
            wasm=$out/$(basename "$wat" .wat).wasm
            wat2wasm -o "$wasm.tmp" "$wat" || die "wat2wasm failed on $wat"
            mv -f "$wasm.tmp" "$wasm"
            log "built $wasm"
        done
    else
        die "need a Python with the wasmtime package (make install) or wabt's wat2wasm"
    fi
}

start=$EPOCHREALTIME
wats=("$src"/*.wat)
count=0
if [[ -e ${wats[0]} ]]; then
    wat2wasm_all "${wats[@]}"
    count=${#wats[@]}
fi

cflags=(--target=wasm32-wasi -O2 -Wall -Wextra -Werror "-Wl,--strip-all")
[[ -n ${WASI_SYSROOT:-} ]] && cflags+=("--sysroot=$WASI_SYSROOT")
c_sources=("$src"/*/main.c)
if [[ -e ${c_sources[0]} ]]; then
    if toolchain; then
        for c in "${c_sources[@]}"; do
            name=$(basename "$(dirname "$c")")
            "$cc" "${cflags[@]}" -o "$out/$name.wasm.tmp" "$c"
            mv -f "$out/$name.wasm.tmp" "$out/$name.wasm"
            log "built $out/$name.wasm"
            count=$((count + 1))
        done
    elif [[ ${EXAMPLES_NO_APT:-0} == 1 ]]; then
        log "no wasm32-wasi C toolchain: skipped ${#c_sources[@]} C example(s)"
    else
        die "no wasm32-wasi C toolchain after installing clang, lld and wasi-libc"
    fi
fi
log "$count module(s) in $out ($(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s)"
