#!/usr/bin/env bash
# Exercises packaging/wirekey.service under systemd as PID 1, as an operator
# would run it: installs the unit and a policy directory holding
# policies/demo.yaml, starts the unit, waits for "ready" in
# `journalctl -u wirekey`, checks that the programs are attached, the maps
# pinned and the running processes backfilled from inside the unit's sandbox,
# reloads (`systemctl reload`: SIGHUP), stops, and checks that no wk_*
# program is left attached or loaded and that the pin directory is gone.
#
# Run as root, in a VM or on a disposable host where wirekey is not installed
# as a service, after scripts/setup has built /opt/wirekey (the unit runs
# /usr/bin/node /opt/wirekey/bin/wirekey.js). Whatever it installs is removed
# when it ends, pass or fail. The Vagrantfile runs it after `npm test`.
#
# Environment: READY_TIMEOUT (seconds, default 90), RELOAD_TIMEOUT (30),
# STOP_TIMEOUT (15).
set -euo pipefail

REPO=/opt/wirekey
UNIT=wirekey.service
UNIT_PATH=/etc/systemd/system/$UNIT
ETC_DIR=/etc/wirekey
POLICY_DIR=$ETC_DIR/policy.d
PIN_DIR=/sys/fs/bpf/wirekey
STATE_DIR=/var/lib/wirekey
LOGS_DIR=/var/log/wirekey
# policies/demo.yaml reads its token from here.
TOKEN_DIR=/run/wirekey-demo
READY_TIMEOUT=${READY_TIMEOUT:-90}
RELOAD_TIMEOUT=${RELOAD_TIMEOUT:-30}
STOP_TIMEOUT=${STOP_TIMEOUT:-15}

log() { printf 'systemd-check: %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

# ---- preconditions: nothing installed yet, so nothing to clean up ----------

[[ $(id -u) -eq 0 ]] || fail "run as root"
[[ -d /run/systemd/system ]] || fail "systemd is not PID 1 here (no /run/systemd/system)"
[[ -f $REPO/packaging/wirekey.service ]] || fail "no $REPO/packaging/wirekey.service: the repository must be at $REPO"
[[ -f $REPO/bin/wirekey.js && -d $REPO/dist ]] || fail "$REPO is not built: run $REPO/scripts/setup first"
[[ -x /usr/bin/node ]] || fail "the unit runs /usr/bin/node, which is missing (node is $(command -v node || echo absent))"
command -v bpftool >/dev/null || fail "bpftool is missing"
CGROUP_ROOT=$(findmnt -n -t cgroup2 -o TARGET | head -n 1)
[[ -n $CGROUP_ROOT ]] || fail "no cgroup v2 mount"
for f in "$UNIT_PATH" "/lib/systemd/system/$UNIT" "/usr/lib/systemd/system/$UNIT" "$ETC_DIR"; do
  [[ ! -e $f ]] || fail "$f exists: wirekey looks installed here, and this check would replace it"
done
[[ ! -e $PIN_DIR ]] || fail "$PIN_DIR exists: another wirekey agent is running (or one did not clean up)"

had_state=0; [[ -e $STATE_DIR ]] && had_state=1
had_logs=0; [[ -e $LOGS_DIR ]] && had_logs=1
made_token=0

# ---- helpers ----------------------------------------------------------------

# The unit's journal since this check started. Output is captured before any
# grep, so that `grep -q` closing the pipe early cannot fail a pipeline.
T0=$(date +%s)
CURSOR=$(journalctl -n 1 --show-cursor -o cat --no-pager 2>/dev/null | sed -n 's/^-- cursor: //p' | tail -n 1 || true)
journal() {
  if [[ -n $CURSOR ]]; then
    journalctl -u "$UNIT" --after-cursor "$CURSOR" -o cat --no-pager 2>/dev/null || true
  else
    journalctl -u "$UNIT" --since "@$T0" -o cat --no-pager 2>/dev/null || true
  fi
}
unit_prop() { systemctl show -p "$1" --value "$UNIT"; }

# scan_attached sets ATTACHED to the lines of `bpftool cgroup tree` (every
# cgroup under the v2 root, with what is attached to it) that name a wk_*
# program: empty when there is none. scan_loaded sets LOADED likewise from
# `bpftool prog show` (loaded programs, attached or not). Both run in this
# shell, never in $(...), so that a bpftool failure fails the check instead
# of reading as "nothing found".
ATTACHED='' LOADED=''
scan_attached() {
  local out
  out=$(bpftool cgroup tree "$CGROUP_ROOT" 2>&1) || fail "bpftool cgroup tree $CGROUP_ROOT failed: $out"
  ATTACHED=$(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^wk_/) { print; next } }' <<<"$out")
}
scan_loaded() {
  local out
  out=$(bpftool prog show 2>&1) || fail "bpftool prog show failed: $out"
  LOADED=$(grep -E '^[0-9]+: .*[[:space:]]name wk_' <<<"$out" || true)
}

# wait_for_journal PATTERN TIMEOUT WHAT: until the unit logs a line matching
# the extended regex PATTERN; fails at once if the unit fails or restarts.
wait_for_journal() {
  local pattern=$1 timeout=$2 what=$3 out state sub i
  for ((i = 0; i < timeout; i++)); do
    out=$(journal)
    if grep -Eq -- "$pattern" <<<"$out"; then return 0; fi
    state=$(unit_prop ActiveState); sub=$(unit_prop SubState)
    if [[ $state == failed || $state == inactive || $sub == auto-restart ]]; then
      fail "$UNIT is $state ($sub) while waiting for $what"
    fi
    sleep 1
  done
  fail "no $what in the journal of $UNIT after ${timeout}s"
}

# wait_until TIMEOUT CMD...: until CMD succeeds (polled once a second).
wait_until() {
  local timeout=$1 i; shift
  for ((i = 0; i < timeout; i++)); do
    if "$@"; then return 0; fi
    sleep 1
  done
  "$@"
}
none_attached() { scan_attached; [[ -z $ATTACHED ]]; }
none_loaded() { scan_loaded; [[ -z $LOADED ]]; }
no_pin_dir() { [[ ! -e $PIN_DIR ]]; }

cleanup() {
  local rc=$?
  set +e
  if ((rc != 0)); then
    log "the journal of $UNIT since the check started:"
    journal | tail -n 100 >&2
  fi
  local state
  state=$(unit_prop ActiveState 2>/dev/null)
  if [[ $state != inactive && $state != failed && -n $state ]]; then
    log "stopping $UNIT ($state)"
    systemctl stop "$UNIT"
  fi
  systemctl reset-failed "$UNIT" >/dev/null 2>&1
  rm -f "$UNIT_PATH"
  systemctl daemon-reload
  rm -rf "$ETC_DIR"
  ((made_token)) && rm -rf "$TOKEN_DIR"
  ((had_state)) || rm -rf "$STATE_DIR"
  ((had_logs)) || rm -rf "$LOGS_DIR"
  if [[ -e $PIN_DIR ]]; then
    # Left behind by a failed stop: unpinning releases the maps and links, so
    # nothing keeps redirecting connections on this machine.
    log "removing the leftover $PIN_DIR"
    rm -rf "$PIN_DIR"
  fi
  if ((rc == 0)); then log "PASS"; else log "FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- install ------------------------------------------------------------------

log "installing $UNIT and $POLICY_DIR/demo.yaml"
install -m 0644 "$REPO/packaging/wirekey.service" "$UNIT_PATH"
install -d -m 0755 "$ETC_DIR"
install -d -m 0755 "$POLICY_DIR"
install -m 0644 "$REPO/policies/demo.yaml" "$POLICY_DIR/demo.yaml"
if [[ ! -e $TOKEN_DIR ]]; then
  # The demo policy's credential: a root-only file, as the agent requires.
  made_token=1
  install -d -m 0700 "$TOKEN_DIR"
  (umask 077 && printf 'systemd-check-token\n' >"$TOKEN_DIR/api-token")
fi
systemctl daemon-reload

# Informational: systemd's own opinion of the unit file.
if ! verify=$(systemd-analyze verify "$UNIT_PATH" 2>&1); then
  log "systemd-analyze verify reported (not fatal):"
  printf '%s\n' "$verify" >&2
elif [[ -n $verify ]]; then
  printf '%s\n' "$verify" >&2
fi

# ---- start ---------------------------------------------------------------------

none_attached || fail "wk_* programs are attached before the unit starts:
$ATTACHED"

log "starting $UNIT"
systemctl start "$UNIT" || fail "systemctl start $UNIT failed"
wait_for_journal '(^|[^[:alnum:]_])ready([^[:alnum:]_]|$)' "$READY_TIMEOUT" '"ready"'
log "ready"

scan_attached
[[ -n $ATTACHED ]] || fail "the agent says ready, but bpftool cgroup tree $CGROUP_ROOT shows no wk_* program"
log "attached under $CGROUP_ROOT:"
printf '%s\n' "$ATTACHED" >&2
[[ -d $PIN_DIR ]] || fail "the agent says ready, but $PIN_DIR does not exist"
[[ -f $STATE_DIR/ca/ca.key ]] || fail "no CA key in $STATE_DIR/ca (StateDirectory)"
[[ -f $LOGS_DIR/audit.log ]] || fail "no audit log at $LOGS_DIR/audit.log (LogsDirectory)"
pid=$(unit_prop MainPID)

# Backfill: at start the agent records the executable of every process already
# running, from /proc/PID/exe. Inside the unit's sandbox it should see about
# as many as root sees from here; the ready line says how many it recorded.
ready_line=$(grep -Ew ready <<<"$(journal)" | tail -n 1)
if [[ $ready_line =~ ([0-9]+)\ running\ processes\ backfilled ]]; then
  backfilled=${BASH_REMATCH[1]}
  readable=0
  for exe in /proc/[0-9]*/exe; do
    if stat -L "$exe" >/dev/null 2>&1; then readable=$((readable + 1)); fi
  done
  log "backfill: the agent recorded $backfilled running processes; root can read the executable of $readable"
  ((backfilled * 2 >= readable)) || fail "the agent backfilled only $backfilled of about $readable running processes:" \
    "under the unit it cannot read /proc/PID/exe of most of them (reading another root process's exe" \
    "needs CAP_SYS_PTRACE, which the unit's CapabilityBoundingSet leaves out)"
else
  log "the ready line gives no backfill count; backfill not checked"
fi

# ---- reload (SIGHUP) --------------------------------------------------------------

log "reloading $UNIT"
systemctl reload "$UNIT" || fail "systemctl reload $UNIT failed"
wait_for_journal 'policy reloaded' "$RELOAD_TIMEOUT" '"policy reloaded"'
[[ $(unit_prop ActiveState) == active ]] || fail "$UNIT is $(unit_prop ActiveState) after the reload"
[[ $(unit_prop MainPID) == "$pid" ]] || fail "the reload restarted the agent (pid $pid -> $(unit_prop MainPID))"
if grep -q 'reload failed' <<<"$(journal)"; then fail "the journal reports a failed reload"; fi
scan_attached
[[ -n $ATTACHED ]] || fail "no wk_* program is attached after the reload"
log "reloaded"

# ---- stop ------------------------------------------------------------------------------

log "stopping $UNIT"
systemctl stop "$UNIT" || fail "systemctl stop $UNIT failed"
result=$(unit_prop Result)
[[ $result == success ]] || fail "$UNIT stopped with Result=$result (ExecMainStatus=$(unit_prop ExecMainStatus))"

wait_until "$STOP_TIMEOUT" none_attached || fail "wk_* programs are still attached after the stop:
$ATTACHED"
wait_until "$STOP_TIMEOUT" no_pin_dir || fail "$PIN_DIR still exists after the stop: $(find "$PIN_DIR" -mindepth 1 -maxdepth 1 -printf '%f ' 2>&1)"
# Programs are freed once their last reference goes; that can lag the exit a little.
wait_until "$STOP_TIMEOUT" none_loaded || fail "wk_* programs are still loaded after the stop:
$LOADED"
grep -Eq '(^|[^[:alnum:]_])stopped$' <<<"$(journal)" || fail "the agent did not log 'stopped' (on SIGTERM it detaches, unpins, then logs it)"
log "stopped: nothing attached under $CGROUP_ROOT, no wk_* program loaded, $PIN_DIR gone"
