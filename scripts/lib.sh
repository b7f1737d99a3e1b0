#!/usr/bin/env bash
# Shared helpers for the scripts in scripts/. Source it, don't run it:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# It deliberately does not `set -euo pipefail` itself: that is the job of the
# script sourcing it, and changing shell options behind a caller's back (e.g.
# an interactive shell sourcing this file) would be rude.

# Repo root, derived from this file's location rather than from $PWD or git,
# so the scripts work from any directory (and even in an exported tree).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

# Project-local, gitignored state: service data dirs, logs, pidfiles, locks.
# shellcheck disable=SC2034  # used by the scripts that source this file
LOCAL="$ROOT/.local"

# Where cargo puts what it builds: $CARGO_TARGET_DIR if set (a relative one is taken from the
# repo root, where the scripts run cargo), target/ otherwise.
# shellcheck disable=SC2034  # used by the scripts that source this file
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ $TARGET == /* ]] || TARGET="$ROOT/$TARGET"

# Log to stderr so stdout stays machine-readable (scripts/services prints
# `export ...` lines on stdout that callers eval).
log() {
    printf '[spin-commerce] %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# `json_number NAME FILE`: the number of field NAME in the one-line JSON report FILE (the
# load drivers' output).
json_number() {
    sed -E "s/.*\"$1\":([0-9.]+).*/\1/" "$2"
}

# `redis_cpu REDIS-CLI…`: the CPU seconds (user + system) the Redis server that `REDIS-CLI…`
# (a redis-cli command line) reaches has used so far, from INFO cpu.
redis_cpu() {
    "$@" info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ { s += $2 } END { printf "%.3f", s }'
}

# `command_calls NAME REDIS-CLI…`: how many times the Redis server that `REDIS-CLI…` reaches
# has run command NAME so far, or every command but INFO itself with `all` (INFO
# commandstats, which also counts each command a script runs, under its own name).
command_calls() {
    local name=$1
    shift
    "$@" info commandstats | tr -d '\r' | awk -F'[:=,]' -v want="cmdstat_$name" \
        '$1 == want || (want == "cmdstat_all" && $1 ~ /^cmdstat_/ && $1 != "cmdstat_info") { n += $3 }
         END { print n + 0 }'
}

# `script_calls REDIS-CLI…`: the script calls (EVALSHA and EVAL) that server has run so far.
script_calls() {
    echo $(($(command_calls evalsha "$@") + $(command_calls eval "$@")))
}

# `ticks PID`: the CPU ticks (user + system) process PID has used so far (0 once it is gone).
ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# `ratio A B`: A ÷ B to two decimals.
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
}

# `have CMD`: true if CMD is an executable on PATH (or a builtin/function).
have() {
    command -v "$1" >/dev/null 2>&1
}

# Run a command as root: directly if we already are, via sudo otherwise.
# Fails with a clear message when neither is possible.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif have sudo; then
        sudo "$@"
    else
        die "need root to run '$*' (not root and sudo is not installed)"
    fi
}

# Print the directory holding the PostgreSQL *server* binaries (initdb, pg_ctl,
# postgres), or return 1 if there is none.
#
# Debian does not put those on PATH (only the pg_wrapper'd client tools), they
# live in /usr/lib/postgresql/<major>/bin. Some machines symlink them into
# PATH, so PATH is checked first (resolving symlinks: pg_ctl finds `postgres`
# next to its real location). An optional argument asks for a given major
# version, which matters when an existing data dir was created by it.
pg_bindir() {
    local want_major="${1:-}" cand
    local -a candidates=() installed=()

    if [[ -n $want_major ]]; then
        candidates+=("/usr/lib/postgresql/$want_major/bin")
    fi
    if have pg_ctl; then
        candidates+=("$(dirname "$(readlink -f "$(command -v pg_ctl)")")")
    fi
    # Newest version first. (An unmatched glob stays literal and is then
    # rejected by the -x tests below.)
    mapfile -t installed < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -rV)
    candidates+=("${installed[@]}")

    for cand in "${candidates[@]}"; do
        if [[ -x $cand/initdb && -x $cand/pg_ctl && -x $cand/postgres ]]; then
            # Honour the requested major version if there was one.
            if [[ -n $want_major ]] && ! "$cand/postgres" --version | grep -q " $want_major\."; then
                continue
            fi
            printf '%s\n' "$cand"
            return 0
        fi
    done
    return 1
}

# `spin_version SPIN`: prints SPIN's version line, or dies if it is a Spin that cannot
# run this app: 4.0.0–4.0.2 hang on a synchronous PostgreSQL query that returns no rows
# (spinframework/spin#3671), which many routes run.
spin_version() {
    local version
    version="$("$1" --version)" || die "$1 --version failed"
    if [[ $version =~ ^spin\ 4\.0\.[012]([^0-9]|$) ]]; then
        die "$version hangs on PostgreSQL queries that return no rows (spinframework/spin#3671): use Spin 4.0.3 or later (README, Running on Spin)"
    fi
    printf '%s\n' "$version"
}

# `write_section NAME FILE`: puts FILE (which starts with `<!-- NAME: … -->` and ends with
# `<!-- /NAME -->`) into BENCHMARKS.md in place of the section between those markers, or
# appends it; the rest of the file stays as it is (scripts/bench.d/*).
write_section() {
    local name=$1 section=$2
    if grep -q "^<!-- $name:" "$ROOT/BENCHMARKS.md" 2>/dev/null; then
        awk -v section="$section" -v first="^<!-- $name:" -v last="^<!-- /$name -->" '
            $0 ~ first { while ((getline line < section) > 0) print line; skip = 1; next }
            $0 ~ last { skip = 0; next }
            !skip { print }' "$ROOT/BENCHMARKS.md" >"$LOCAL/BENCHMARKS.md.new"
        mv "$LOCAL/BENCHMARKS.md.new" "$ROOT/BENCHMARKS.md"
    else
        { echo; cat "$section"; } >>"$ROOT/BENCHMARKS.md"
    fi
}

# `database_url_named NAME`: $COMMERCE_DATABASE_URL with its database replaced by NAME, its
# query (sslmode and the like) kept. The benches run on databases of their own this way.
database_url_named() {
    local query="" url="${COMMERCE_DATABASE_URL%%\?*}"
    if [[ $COMMERCE_DATABASE_URL == *\?* ]]; then query="?${COMMERCE_DATABASE_URL#*\?}"; fi
    printf '%s\n' "${url%/*}/$1$query"
}

# `revision_tree REV`: prints the path of a worktree of git revision REV under .local/,
# adding it the first time (it is kept, so a second run is quick).
revision_tree() {
    local commit tree
    commit=$(git -C "$ROOT" rev-parse --short "$1^{commit}")
    tree="$LOCAL/bench-before-$commit"
    if [[ ! -d $tree ]]; then
        git -C "$ROOT" worktree add --detach "$tree" "$commit" >&2
    fi
    printf '%s\n' "$tree"
}

# `build_revision REV`: builds `commerce` (release) of git revision REV in its
# revision_tree (its target dir kept too) and prints the binary's path. For the benches
# that compare this checkout with an older one.
build_revision() {
    local commit tree
    commit=$(git -C "$ROOT" rev-parse --short "$1^{commit}")
    tree=$(revision_tree "$commit")
    log "building $commit (release) in $tree"
    (cd "$tree" && cargo build --release --locked -p commerce-native --target-dir "$LOCAL/bench-before-target") >&2
    printf '%s\n' "$LOCAL/bench-before-target/release/commerce"
}
