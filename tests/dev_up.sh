#!/usr/bin/env bash
# `scripts/dev up` itself: it can run again on a stack that runs, it replaces a worker killed with
# SIGKILL (whose pid stays a zombie when nothing reaps it), it keeps the secrets it writes to their
# owner, and `restart` refuses what it does not know. `scripts/dev test` runs this before
# `cargo test` (RTMANAGER_DEV_TEST_SCRIPT=0 skips it); it also runs alone:
#
#   tests/dev_up.sh
#
# It runs `scripts/dev up` three times (the first may install, build and start everything) and
# leaves the stack up, worker included. Prints one line per check, then `N passed, M failed`.
set -uo pipefail # no -e: a failed check is counted, and the next ones still run

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEV="$ROOT/.dev"
LOGS="$DEV/logs"
PIDFILE="$DEV/rtmanager.pid"
HTTP_PORT=${RTMANAGER_DEV_HTTP_PORT:-8080}
# Generous: the first `up` on a fresh checkout installs packages and builds rtmanager.
UP_TIMEOUT=${RTMANAGER_DEV_UP_TIMEOUT:-1800}
mkdir -p "$LOGS"

passed=0 failed=0
pass() { printf 'ok    %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'FAIL  %s\n' "$*"; failed=$((failed + 1)); }
check() {
  local what=$1; shift
  if "$@"; then pass "$what"; else fail "$what"; fi
}

# Runs `scripts/dev up`, its output in .dev/logs/dev_up_test.<n>.log (shown when it fails).
# timeout stops its whole process group on expiry, so a hung build does not outlive the test.
run_up() {
  local log="$LOGS/dev_up_test.$1.log" rc=0
  timeout -k 10 "$UP_TIMEOUT" bash "$ROOT/scripts/dev" up </dev/null >"$log" 2>&1 || rc=$?
  if [ $rc != 0 ]; then
    echo "  scripts/dev up exited $rc; the end of $log:"
    tail -15 "$log" | sed 's/^/  | /'
  fi
  return $rc
}

ready() { curl -sf --max-time 5 -o /dev/null "http://127.0.0.1:$HTTP_PORT/readyz"; }

# `pid` is a live rtmanager process: /proc/<pid>/cmdline runs the rtmanager binary and the state
# in /proc/<pid>/stat is not Z (kill -0 succeeds on a zombie). Independent of scripts/dev's own
# helper, which is what is under test.
is_rtmanager() {
  local pid=${1:-} stat state args=()
  [[ $pid =~ ^[1-9][0-9]*$ ]] || return 1
  { read -r stat <"/proc/$pid/stat"; } 2>/dev/null || return 1
  state=${stat##*) }
  state=${state%% *}
  [ "$state" != Z ] && [ "$state" != X ] || return 1
  { mapfile -d '' -t args <"/proc/$pid/cmdline"; } 2>/dev/null || return 1
  [ "$(basename -- "${args[0]:-}")" = rtmanager ]
}

worker_pid() { cat "$PIDFILE" 2>/dev/null || true; }

mode_600() { [ "$(stat -c %a "$1" 2>/dev/null)" = 600 ]; }

# Runs the command every 0.2s until it succeeds, for up to `seconds`.
within() {
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}
gone() { ! is_rtmanager "$1"; }
replaced() { [ "$2" != "$1" ] && is_rtmanager "$2"; } # old new
worker_up() { ready && is_rtmanager "$(worker_pid)"; }

# (a) Twice in a row: the second finds everything running, and must still exit 0.
check "scripts/dev up exits 0" run_up 1
check "scripts/dev up exits 0 again, with everything running" run_up 2
check "/readyz answers after the second up" ready

# (b) The worker killed with SIGKILL: the next up starts a new one.
old=$(worker_pid)
if is_rtmanager "$old"; then
  kill -9 "$old"
  check "the worker (pid $old) is dead after SIGKILL" within 10 gone "$old"
  check "scripts/dev up exits 0 after the worker was killed" run_up 3
  new=$(worker_pid)
  check "/readyz answers after the worker was replaced" ready
  check "the pid file names a new live rtmanager process (old $old, new ${new:-none})" \
    replaced "$old" "$new"
else
  fail "the pid file names a live rtmanager process to kill (it holds '${old}')"
fi

# (c) The secrets are the owner's alone.
check ".dev/env has mode 600" mode_600 "$DEV/env"
check ".dev/api-token has mode 600" mode_600 "$DEV/api-token"

# (d) An unknown service is an error, not a silent no-op.
rc=0
timeout 30 bash "$ROOT/scripts/dev" restart nosuch </dev/null >/dev/null 2>&1 || rc=$?
# 124: timeout's, for a hang.
check "scripts/dev restart nosuch fails (exit $rc)" test "$rc" != 0 -a "$rc" != 124

# Whatever failed above, the worker is left running.
if ! worker_up; then
  echo "  the worker is down: running scripts/dev up to bring it back"
  run_up 4
  check "the worker is up at the end" worker_up
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
