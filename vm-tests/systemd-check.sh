#!/usr/bin/env bash
# Exercises packaging/wirekey.service under systemd as PID 1, as an operator
# would run it, and prints one line per check:
#
#   ok    start              active (running) and "ready" in the journal after 2s
#   FAIL  reload-bad         ...
#
# The checks are the CHECKS list at the end, in order; each is a function
# below. A check that fails stops the run (the later ones build on the state
# the earlier ones leave) and the rest are listed as not run. To add one:
# write check_NAME (return 0 for ok; `bad "why"` then return 1 for FAIL; set
# DETAIL for the ok line) and add "NAME" to CHECKS where it belongs.
#
# Run as root, in a VM, a container booted with systemd (vm-tests/nspawn-systemd)
# or a disposable host where wirekey is not installed as a service, with the
# built repository at /opt/wirekey (the unit runs
# /usr/bin/node /opt/wirekey/bin/wirekey.js). Whatever it installs is removed
# when it ends, pass or fail. The Vagrantfile runs it after `npm test`.
#
# It installs the unit, a policy in /etc/wirekey/policy.d that binds the
# cgroup of the slice wkcheck.slice to an HTTPS API (bearer token, proxy datapath) and a
# plaintext API (X-Api-Key, kernel datapath), both served from 198.18.0.10
# (added to lo) by test/support's upstreams, with certificates made here by
# openssl; workloads are transient units in that slice (systemd-run).
#
# Environment: READY_TIMEOUT (seconds, default 90), RELOAD_TIMEOUT (30),
# STOP_TIMEOUT (15), RESTART_TIMEOUT (60), WATCHDOG_SEC (the watchdog check's
# WatchdogSec=, default 4), MAX_EXPOSURE (the highest `systemd-analyze
# security` exposure accepted, default 3.5); WIREKEY_CHECK_SHARED_KERNEL=1 when
# other systems share this kernel (a container): "no wk_* program loaded" is
# then judged by this system's processes only, not by every program the
# kernel holds.
set -uo pipefail

REPO=/opt/wirekey
# With WIREKEY_CHECK_PACKAGE=FILE.deb, wirekey is installed from that package
# (dpkg -i) instead of being the repository at /opt/wirekey, and the checks'
# own tools (the test upstreams) come from WIREKEY_CHECK_SOURCE, a checkout.
PACKAGE=${WIREKEY_CHECK_PACKAGE:-}
SOURCE=${WIREKEY_CHECK_SOURCE:-$REPO}
WIREKEY="/usr/bin/node $REPO/bin/wirekey.js"
[[ -z $PACKAGE ]] || WIREKEY=/usr/bin/wirekey
UNIT=wirekey.service
UNIT_PATH=/etc/systemd/system/$UNIT
DROPIN_DIR=/etc/systemd/system/$UNIT.d
ETC_DIR=/etc/wirekey
POLICY_DIR=$ETC_DIR/policy.d
PIN_DIR=/sys/fs/bpf/wirekey
STATE_DIR=/var/lib/wirekey
LOGS_DIR=/var/log/wirekey
SLICE=wkcheck.slice
SLICE_PATH=/etc/systemd/system/$SLICE
# Credentials, certificates and the upstreams' records.
WORK=/run/wirekey-check
API_HOST=api.wirekey.check
INVENTORY_HOST=inventory.wirekey.check
UPSTREAM_ADDR=198.18.0.10
READY_TIMEOUT=${READY_TIMEOUT:-90}
RELOAD_TIMEOUT=${RELOAD_TIMEOUT:-30}
STOP_TIMEOUT=${STOP_TIMEOUT:-15}
RESTART_TIMEOUT=${RESTART_TIMEOUT:-60}
WATCHDOG_SEC=${WATCHDOG_SEC:-4}
MAX_EXPOSURE=${MAX_EXPOSURE:-3.5}
SHARED_KERNEL=${WIREKEY_CHECK_SHARED_KERNEL:-0}

log() { printf 'systemd-check: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# ---- preconditions: nothing installed yet, so nothing to clean up -------------

[[ $(id -u) -eq 0 ]] || die "run as root"
[[ -d /run/systemd/system ]] || die "systemd is not PID 1 here (no /run/systemd/system)"
if [[ -n $PACKAGE ]]; then
  [[ -f $PACKAGE ]] || die "no package $PACKAGE"
  [[ -f $SOURCE/test/support/upstream-server.mjs ]] || die "no test upstreams in $SOURCE/test/support (set WIREKEY_CHECK_SOURCE)"
else
  [[ -f $REPO/packaging/wirekey.service ]] || die "no $REPO/packaging/wirekey.service: the repository must be at $REPO"
  [[ -f $REPO/bin/wirekey.js && -d $REPO/dist ]] || die "$REPO is not built: run $REPO/scripts/setup first"
fi
[[ -x /usr/bin/node ]] || die "the unit runs /usr/bin/node, which is missing (node is $(command -v node || echo absent))"
for tool in bpftool curl openssl ip systemd-run; do command -v "$tool" >/dev/null || die "$tool is missing"; done
CGROUP_ROOT=$(findmnt -n -t cgroup2 -o TARGET | sort | head -n 1)
[[ -n $CGROUP_ROOT ]] || die "no cgroup v2 mount"
for f in "$UNIT_PATH" "$DROPIN_DIR" "/lib/systemd/system/$UNIT" "/usr/lib/systemd/system/$UNIT" "$ETC_DIR" "$SLICE_PATH" "$WORK"; do
  [[ ! -e $f ]] || die "$f exists: wirekey looks installed here, and this check would replace it"
done
[[ ! -e $PIN_DIR ]] || die "$PIN_DIR exists: another wirekey agent is running (or one did not clean up)"
! ip -o addr show dev lo | grep -q " $UPSTREAM_ADDR/" || die "$UPSTREAM_ADDR is already on lo"

had_state=0; [[ -e $STATE_DIR ]] && had_state=1
had_logs=0; [[ -e $LOGS_DIR ]] && had_logs=1

# ---- helpers --------------------------------------------------------------------

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
# The STATUS= line the agent last sent (systemctl status shows it as Status:).
status_text() { unit_prop StatusText; }
count_matches() { grep -Ec -- "$1" <<<"$(journal)" || true; }
READY_RE='(^| )ready: '

REASON='' DETAIL=''
bad() { REASON=$*; }

# scan_attached sets ATTACHED to the lines of `bpftool cgroup tree` (every
# cgroup under the v2 root, with what is attached to it) that name a wk_*
# program: empty when there is none. scan_loaded sets LOADED likewise from
# `bpftool prog show` (loaded programs, attached or not); with a shared
# kernel, only from the programs that processes of this system hold (their
# program and link fds). Both return non-zero when bpftool fails, so that
# a failure cannot read as "nothing found".
ATTACHED='' LOADED=''
scan_attached() {
  local out
  out=$(bpftool cgroup tree "$CGROUP_ROOT" 2>&1) || { bad "bpftool cgroup tree $CGROUP_ROOT failed: $out"; return 2; }
  ATTACHED=$(awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^wk_/) { print; next } }' <<<"$out")
}
scan_loaded() {
  local out ids fd id
  if ((SHARED_KERNEL)); then
    ids=$(for fd in /proc/[0-9]*/fd/*; do
      case $(readlink "$fd" 2>/dev/null) in
        anon_inode:bpf-prog | anon_inode:bpf_link)
          sed -n 's/^prog_id:[[:space:]]*//p' "${fd/\/fd\//\/fdinfo\/}" 2>/dev/null ;;
      esac
    done | sort -un)
    out=''
    for id in $ids; do out+=$(bpftool prog show id "$id" 2>/dev/null)$'\n'; done
  else
    out=$(bpftool prog show 2>&1) || { bad "bpftool prog show failed: $out"; return 2; }
  fi
  LOADED=$(grep -E '^[0-9]+: .*[[:space:]]name wk_' <<<"$out" || true)
}
none_attached() { scan_attached && [[ -z $ATTACHED ]]; }
none_loaded() { scan_loaded && [[ -z $LOADED ]]; }
no_pin_dir() { [[ ! -e $PIN_DIR ]]; }

# wait_until TIMEOUT CMD...: until CMD succeeds (polled twice a second).
wait_until() {
  local timeout=$1 i; shift
  for ((i = 0; i < timeout * 2; i++)); do
    if "$@"; then return 0; fi
    sleep 0.5
  done
  "$@"
}

# wait_for_journal PATTERN COUNT TIMEOUT: until the unit has logged COUNT
# lines matching the extended regex PATTERN; gives up at once if the unit
# fails or is waiting to restart.
wait_for_journal() {
  local pattern=$1 want=$2 timeout=$3 state sub i
  for ((i = 0; i < timeout * 2; i++)); do
    (($(count_matches "$pattern") >= want)) && return 0
    state=$(unit_prop ActiveState); sub=$(unit_prop SubState)
    if [[ $state == failed || $state == inactive || $sub == auto-restart ]]; then
      bad "$UNIT is $state ($sub) while waiting for /$pattern/ in its journal"
      return 1
    fi
    sleep 0.5
  done
  bad "no /$pattern/ in the journal of $UNIT after ${timeout}s"
  return 1
}

# The upstreams write one JSON line per event; these read the last request's
# Authorization / X-Api-Key SHA-256 (the values themselves are never recorded).
sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
records() { cat "$WORK/$1.jsonl" 2>/dev/null || true; }
record_count() { grep -c '"method"' <<<"$(records "$1")" || true; }

# workload NAME CMD...: runs CMD as a transient service in $SLICE (the
# policy's workload), waits for it and prints its output.
workload() {
  local name=$1; shift
  systemd-run --quiet --wait --pipe --collect --slice="$SLICE" --unit="wkcheck-$name-$RANDOM" -- "$@"
}
# outsider NAME CMD...: the same outside the slice.
outsider() {
  local name=$1; shift
  systemd-run --quiet --wait --pipe --collect --unit="wkcheck-$name-$RANDOM" -- "$@"
}

# call_api FROM: an HTTPS request to the bound API with no key, from the slice
# (FROM=workload) or outside it; fails unless the API answered.
call_api() {
  local from=$1 before n ca=$WORK/wirekey-ca.pem
  [[ $from == outsider ]] && ca=$WORK/upstream-ca.pem
  before=$(record_count upstream)
  if ! out=$("$from" curl curl -sS --max-time 20 --resolve "$API_HOST:443:$UPSTREAM_ADDR" --cacert "$ca" \
      -o /dev/null -w '%{http_code}' "https://$API_HOST/v1/hello" 2>&1); then
    bad "curl from ${from/workload/$SLICE} failed: $out"
    return 1
  fi
  n=$(record_count upstream)
  ((n > before)) || { bad "curl got $out, but the API recorded no request"; return 1; }
  LAST_AUTH=$(grep '"method"' <<<"$(records upstream)" | tail -n 1 | sed -n 's/.*"authorization":\["\{0,1\}\([0-9a-f]*\).*/\1/p')
  HTTP_CODE=$out
}

# expect_bearer TOKEN_FILE WHAT: a workload's HTTPS call reaches the API with
# "Authorization: Bearer <the file's token>".
expect_bearer() {
  local token
  token=$(tr -d '\n' <"$1")
  call_api workload || return 1
  [[ $LAST_AUTH == "$(sha256 "Bearer $token")" ]] || {
    bad "the API got ${LAST_AUTH:+an Authorization header, not the one from $1}${LAST_AUTH:-no Authorization header} ($2)"
    return 1
  }
}

install_policy() {
  # $1: the credential the HTTPS binding injects.
  cat >"$POLICY_DIR/check.yaml" <<EOF
# Installed by vm-tests/systemd-check.sh; removed when it ends.
apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: check-token}
spec: {file: {path: $WORK/api-token}}
---
apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: check-token-rotated}
spec: {file: {path: $WORK/api-token-rotated}}
---
apiVersion: wirekey.dev/v1alpha1
kind: CredentialSource
metadata: {name: check-inventory-key}
spec: {file: {path: $WORK/inventory-key}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: check-api}
spec: {hosts: [$API_HOST], port: 443, tls: true}
---
apiVersion: wirekey.dev/v1alpha1
kind: Service
metadata: {name: check-inventory}
spec: {addresses: [$UPSTREAM_ADDR/32], hosts: [$INVENTORY_HOST], port: 80, tls: false}
---
apiVersion: wirekey.dev/v1alpha1
kind: Workload
metadata: {name: check-app}
spec: {selector: {cgroup: /$SLICE}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: check-app-api}
spec: {workload: check-app, service: check-api, inject: {bearer: {credential: $1}}}
---
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: check-app-inventory}
spec: {workload: check-app, service: check-inventory, inject: {header: {credential: check-inventory-key, name: X-Api-Key}}}
EOF
}

cleanup() {
  local rc=$? state unit
  set +e
  if ((rc != 0)); then
    log "the journal of $UNIT since the check started:"
    journal | tail -n 60 >&2
  fi
  state=$(unit_prop ActiveState 2>/dev/null)
  if [[ $state != inactive && $state != failed && -n $state ]]; then
    log "stopping $UNIT ($state)"
    systemctl stop "$UNIT"
  fi
  for unit in wkcheck-upstream.service wkcheck-inventory.service "$SLICE"; do
    systemctl stop "$unit" >/dev/null 2>&1
  done
  systemctl reset-failed "$UNIT" wkcheck-upstream.service wkcheck-inventory.service >/dev/null 2>&1
  rm -rf "$UNIT_PATH" "$DROPIN_DIR" "$SLICE_PATH"
  [[ -z $PACKAGE ]] || dpkg --purge wirekey >/dev/null 2>&1
  systemctl daemon-reload
  rm -rf "$ETC_DIR" "$WORK"
  ((had_state)) || rm -rf "$STATE_DIR"
  ((had_logs)) || rm -rf "$LOGS_DIR"
  ip addr del "$UPSTREAM_ADDR/32" dev lo 2>/dev/null
  if [[ -e $PIN_DIR ]]; then
    # Left behind by a failed stop: unpinning releases the maps and links, so
    # nothing keeps redirecting connections on this machine.
    log "removing the leftover $PIN_DIR"
    rm -rf "$PIN_DIR"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- checks -----------------------------------------------------------------------
# Each sets REASON (bad) and returns non-zero on failure; DETAIL is shown on success.

check_install() {
  local verify
  install -d -m 0700 "$WORK"
  (umask 077
   printf 'check-%s\n' "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$WORK/api-token"
   printf 'rotated-%s\n' "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$WORK/api-token-rotated"
   printf 'inv-%s\n' "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$WORK/inventory-key")
  # The API's certificates, from a CA of its own that the agent is told to trust.
  if ! out=$(cd "$WORK" && {
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout upstream-ca.key -out upstream-ca.pem \
        -days 2 -subj '/CN=wirekey check upstream CA' \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign &&
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout upstream.key -out upstream.csr \
        -subj "/CN=$API_HOST" &&
      printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$API_HOST" >upstream.ext &&
      openssl x509 -req -in upstream.csr -CA upstream-ca.pem -CAkey upstream-ca.key -CAcreateserial \
        -out upstream.pem -days 2 -extfile upstream.ext; } 2>&1); then
    bad "openssl: $out"; return 1
  fi
  ip addr add "$UPSTREAM_ADDR/32" dev lo || { bad "cannot add $UPSTREAM_ADDR to lo"; return 1; }
  systemd-run --quiet --unit=wkcheck-upstream -p StandardOutput="file:$WORK/upstream.jsonl" -- \
    /usr/bin/node "$SOURCE/test/support/upstream-server.mjs" --cert "$WORK/upstream.pem" --key "$WORK/upstream.key" \
    --host "$UPSTREAM_ADDR" --port 443 || { bad "cannot start the HTTPS upstream"; return 1; }
  systemd-run --quiet --unit=wkcheck-inventory -p StandardOutput="file:$WORK/inventory.jsonl" -- \
    /usr/bin/node "$SOURCE/test/support/plain-upstream.mjs" --host "$UPSTREAM_ADDR" --port 80 ||
    { bad "cannot start the plaintext upstream"; return 1; }

  local unit_file=$UNIT_PATH
  if [[ -n $PACKAGE ]]; then
    # As an operator installs it: the package's unit, in /lib/systemd/system.
    out=$(dpkg -i "$PACKAGE" 2>&1) || { bad "dpkg -i $(basename "$PACKAGE"): $out"; return 1; }
    unit_file=/lib/systemd/system/$UNIT
    [[ -f $unit_file && -x /usr/bin/wirekey ]] || { bad "the package installed no $unit_file or /usr/bin/wirekey"; return 1; }
  else
    install -m 0644 "$REPO/packaging/wirekey.service" "$UNIT_PATH"
  fi
  # The one local change: trust the check's upstream CA (an operator's drop-in would do the same).
  install -d -m 0755 "$DROPIN_DIR"
  { echo '[Service]'; echo 'ExecStart='
    sed -n 's/^ExecStart=\(.*\)$/ExecStart=\1 --upstream-ca '"${WORK//\//\\/}"'\/upstream-ca.pem/p' "$unit_file"; } \
    >"$DROPIN_DIR/check.conf"
  printf '[Unit]\nDescription=wirekey check workloads\n' >"$SLICE_PATH"
  install -d -m 0755 "$ETC_DIR" "$POLICY_DIR"
  install_policy check-token
  systemctl daemon-reload
  # The workload's slice exists before the agent resolves its selector.
  systemctl start "$SLICE" || { bad "cannot start $SLICE"; return 1; }
  wait_until 10 grep -q listening "$WORK/inventory.jsonl" || { bad "the plaintext upstream did not start"; return 1; }
  # systemd's own opinion of the unit file: reported, not fatal.
  verify=$(systemd-analyze verify "$unit_file" 2>&1)
  [[ -z $verify ]] || { log "systemd-analyze verify $unit_file (not fatal):"; printf '%s\n' "$verify" >&2; }
  DETAIL="$([[ -n $PACKAGE ]] && echo "package $(dpkg-query -W -f '${Package} ${Version}' wirekey) installed, " || echo 'unit, ')drop-in, policy, $SLICE, upstreams on $UPSTREAM_ADDR:443/80; systemd-analyze verify: $([[ -z $verify ]] && echo clean || echo 'reported, above')"
}

# systemd's own rating of the unit's sandbox, as an operator would run it:
# the exposure (0 safe .. 10 unprotected) must not exceed MAX_EXPOSURE.
check_security() {
  local out level
  out=$(systemd-analyze security --no-pager "$UNIT" 2>&1)
  level=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\) .*/\1/p' <<<"$out")
  [[ -n $level ]] || { bad "systemd-analyze security $UNIT printed no exposure level: $(tail -n 3 <<<"$out")"; return 1; }
  awk -v l="$level" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(l <= m) }' || {
    bad "systemd-analyze security rates $UNIT $level, above $MAX_EXPOSURE: $(grep -E '^✗' <<<"$out" | tr -s ' ' | tr '\n' ';')"
    return 1
  }
  DETAIL="systemd-analyze security: exposure $(sed -n 's/.*Overall exposure level for [^:]*: //p' <<<"$out") (at most $MAX_EXPOSURE)"
}

check_start() {
  local t=$SECONDS
  none_attached || { bad "wk_* programs are attached before the unit starts: $ATTACHED"; return 1; }
  systemctl start "$UNIT" || { bad "systemctl start $UNIT failed"; return 1; }
  wait_for_journal "$READY_RE" 1 "$READY_TIMEOUT" || return 1
  [[ $(unit_prop ActiveState)/$(unit_prop SubState) == active/running ]] ||
    { bad "$UNIT is $(unit_prop ActiveState)/$(unit_prop SubState) after ready"; return 1; }
  PID=$(unit_prop MainPID)
  DETAIL="active (running), pid $PID, \"ready\" in the journal after $((SECONDS - t))s"
}

# Type=notify: systemd calls the unit active only once the agent sent
# READY=1, which it does after its ready line; Type=exec would be active at
# once, before the programs are attached. The agent's STATUS= line names the
# policy in force, and systemctl status shows it.
check_ready_notify() {
  local ready_line ready_ms active active_ms hash out
  [[ $(unit_prop Type) == notify && $(unit_prop NotifyAccess) == main ]] ||
    { bad "$UNIT is Type=$(unit_prop Type) NotifyAccess=$(unit_prop NotifyAccess), not notify/main"; return 1; }
  ready_line=$(grep -E "$READY_RE" <<<"$(journal)" | tail -n 1)
  ready_ms=$(date -d "${ready_line%% *}" +%s%3N 2>/dev/null) || { bad "the ready line has no timestamp: $ready_line"; return 1; }
  active=$(systemctl show -p ActiveEnterTimestamp --value --timestamp=us+utc "$UNIT")
  active_ms=$(( $(date -d "${active% UTC} UTC" +%s%6N) / 1000 ))
  ((active_ms >= ready_ms)) ||
    { bad "$UNIT became active at $active, $((ready_ms - active_ms)) ms before the agent's ready line (${ready_line%% *})"; return 1; }
  hash=$(grep -oE 'policy [0-9a-f]{12}:' <<<"$(journal)" | tail -n 1 | cut -c8-19)
  [[ $(status_text) == "ready: 1 workload(s), 2 binding(s), policy $hash" ]] ||
    { bad "the unit's status is \"$(status_text)\", not \"ready: 1 workload(s), 2 binding(s), policy $hash\""; return 1; }
  out=$(SYSTEMD_COLORS=0 systemctl status --no-pager --lines=0 "$UNIT" 2>&1)
  grep -qF "Status: \"$(status_text)\"" <<<"$out" || { bad "systemctl status shows no Status: line: $out"; return 1; }
  DETAIL="Type=notify: active $((active_ms - ready_ms)) ms after the ready line; Status: \"$(status_text)\""
}

check_attached() {
  scan_attached || return 1
  [[ -n $ATTACHED ]] || { bad "the agent says ready, but bpftool cgroup tree $CGROUP_ROOT shows no wk_* program"; return 1; }
  [[ -d $PIN_DIR ]] || { bad "the agent says ready, but $PIN_DIR does not exist"; return 1; }
  [[ -f $STATE_DIR/ca/ca.key ]] || { bad "no CA key in $STATE_DIR/ca (StateDirectory)"; return 1; }
  [[ -f $LOGS_DIR/audit.log ]] || { bad "no audit log at $LOGS_DIR/audit.log (LogsDirectory)"; return 1; }
  DETAIL="$(wc -l <<<"$ATTACHED") wk_* attachments under $CGROUP_ROOT, pins in $PIN_DIR, CA in $STATE_DIR, audit in $LOGS_DIR"
}

# At start the agent records the executable of every process already running,
# from /proc/PID/exe. Inside the unit's sandbox it should see about as many as
# root sees from here; fewer than half is what a capability bounding set
# without CAP_SYS_PTRACE produces.
check_backfill() {
  local ready_line backfilled readable=0 exe
  ready_line=$(grep -E "$READY_RE" <<<"$(journal)" | tail -n 1)
  [[ $ready_line =~ ([0-9]+)\ running\ processes\ backfilled ]] || { DETAIL="the ready line gives no count: not checked"; return 0; }
  backfilled=${BASH_REMATCH[1]}
  for exe in /proc/[0-9]*/exe; do stat -L "$exe" >/dev/null 2>&1 && readable=$((readable + 1)); done
  ((backfilled * 2 >= readable)) || {
    bad "the agent backfilled $backfilled running processes, root can read the executable of $readable"; return 1; }
  DETAIL="$backfilled running processes recorded; root can read the executable of $readable"
}

check_status() {
  local out rc
  out=$(SYSTEMD_COLORS=0 systemctl status --no-pager --lines=20 "$UNIT" 2>&1); rc=$?
  ((rc == 0)) || { bad "systemctl status exited $rc"; return 1; }
  grep -q 'Active: active (running)' <<<"$out" || { bad "systemctl status shows no 'Active: active (running)'"; return 1; }
  grep -q "Main PID: $PID " <<<"$out" || { bad "systemctl status does not show Main PID $PID"; return 1; }
  grep -Eq ' ready: ' <<<"$out" || { bad "systemctl status shows no ready line among the unit's log lines"; return 1; }
  out=$($WIREKEY status 2>&1) || { bad "wirekey status failed: $out"; return 1; }
  DETAIL="systemctl status: active (running), Main PID $PID, the ready line; wirekey status exits 0"
}

check_inject_proxy() {
  node_ca=$($WIREKEY ca cert --state-dir "$STATE_DIR" 2>&1) || { bad "wirekey ca cert: $node_ca"; return 1; }
  printf '%s' "$node_ca" >"$WORK/wirekey-ca.pem"
  expect_bearer "$WORK/api-token" "proxy datapath" || return 1
  DETAIL="a unit in $SLICE called https://$API_HOST with no key: HTTP $HTTP_CODE, the API got Bearer <api-token>"
}

check_inject_kernel() {
  local out port key rec
  key=$(tr -d '\n' <"$WORK/inventory-key")
  out=$(workload curl curl -sS --max-time 20 --resolve "$INVENTORY_HOST:80:$UPSTREAM_ADDR" -o /dev/null \
    -w '%{http_code} %{local_port}' "http://$INVENTORY_HOST/v1/items" 2>&1) || { bad "curl failed: $out"; return 1; }
  port=${out#* }
  # The API's peer port is curl's own: the kernel wrote the header into curl's
  # connection, with no proxy in between.
  rec=$(grep '"method"' <<<"$(records inventory)" | grep -E "\"remotePort\":$port[,}]" | tail -n 1)
  [[ -n $rec ]] || { bad "HTTP ${out% *}, but the plaintext API recorded no request from curl's port $port"; return 1; }
  grep -q "\"apiKey\":\[\"$(sha256 "$key")\"\]" <<<"$rec" || { bad "the plaintext API did not get X-Api-Key <inventory-key>: $rec"; return 1; }
  DETAIL="a unit in $SLICE called http://$INVENTORY_HOST: HTTP ${out% *}, X-Api-Key <inventory-key> on curl's own connection"
}

check_not_bound() {
  call_api outsider || return 1
  [[ -z $LAST_AUTH ]] || { bad "a unit outside $SLICE got an Authorization header"; return 1; }
  DETAIL="a unit outside $SLICE reached the API directly, with no credential"
}

check_reload_good() {
  local before rc
  before=$(count_matches 'policy reloaded')
  install_policy check-token-rotated
  systemctl reload "$UNIT"; rc=$?
  ((rc == 0)) || { bad "systemctl reload exited $rc for a good policy"; return 1; }
  wait_for_journal 'policy reloaded' $((before + 1)) "$RELOAD_TIMEOUT" || return 1
  [[ $(unit_prop ActiveState) == active ]] || { bad "$UNIT is $(unit_prop ActiveState) after the reload"; return 1; }
  [[ $(unit_prop MainPID) == "$PID" ]] || { bad "the reload restarted the agent (pid $PID -> $(unit_prop MainPID))"; return 1; }
  scan_attached || return 1
  [[ -n $ATTACHED ]] || { bad "no wk_* program is attached after the reload"; return 1; }
  expect_bearer "$WORK/api-token-rotated" "the reloaded policy's credential" || return 1
  local hash
  hash=$(grep -oE 'policy reloaded: policy [0-9a-f]{12} -> [0-9a-f]{12}' <<<"$(journal)" | tail -n 1 | tail -c 13)
  [[ $(status_text) == *"policy $hash" ]] || { bad "the unit's status is \"$(status_text)\", not the new policy $hash"; return 1; }
  DETAIL="systemctl reload exit 0, \"policy reloaded\", same pid; the binding now injects <api-token-rotated>; Status: \"$(status_text)\""
}

# ExecReload is `wirekey reload`: `systemctl reload` fails, with the reasons
# in the journal, when the policy is refused, and the running one stays in
# force. A SIGHUP with the same file reaches the agent, which refuses it too
# and says so in its STATUS= line (RELOADING=1, then READY=1: the unit is
# back to active, not stuck reloading).
check_reload_bad() {
  local before rc status_before refused rc_good
  status_before=$(status_text)
  before=$(count_matches 'reload refused: ')
  cat >"$POLICY_DIR/broken.yaml" <<EOF
apiVersion: wirekey.dev/v1alpha1
kind: Binding
metadata: {name: check-broken}
spec: {workload: no-such-workload, service: check-api, inject: {bearer: {credential: check-token}}}
EOF
  systemctl reload "$UNIT" 2>/dev/null; rc=$?
  ((rc != 0)) || { bad "systemctl reload exited 0 for a policy with an error"; return 1; }
  wait_for_journal 'reload refused: 1 problem\(s\)' $((before + 1)) "$RELOAD_TIMEOUT" || return 1
  grep -q 'broken.yaml:4:[0-9]*: .*no-such-workload' <<<"$(journal)" || { bad "the journal does not name broken.yaml:4 and its problem"; return 1; }
  [[ $(unit_prop ActiveState)/$(unit_prop SubState) == active/running ]] ||
    { bad "$UNIT is $(unit_prop ActiveState)/$(unit_prop SubState) after the refused reload"; return 1; }
  [[ $(unit_prop MainPID) == "$PID" ]] || { bad "the refused reload restarted the agent"; return 1; }
  [[ $(status_text) == "$status_before" ]] || { bad "the status changed from \"$status_before\" to \"$(status_text)\" though nothing was applied"; return 1; }
  expect_bearer "$WORK/api-token-rotated" "the running policy must stay in force" || return 1

  before=$(count_matches 'policy reload failed, keeping the running policy')
  systemctl kill --kill-whom=main --signal=SIGHUP "$UNIT" || { bad "systemctl kill --signal=SIGHUP failed"; return 1; }
  wait_for_journal 'policy reload failed, keeping the running policy' $((before + 1)) "$RELOAD_TIMEOUT" || return 1
  wait_until 10 status_starts_with 'policy refused, previous in force: ' ||
    { bad "after a refused SIGHUP reload the status is \"$(status_text)\""; return 1; }
  refused=$(status_text)
  wait_until 10 unit_is active/running || { bad "$UNIT is $(unit_prop ActiveState)/$(unit_prop SubState) after a refused SIGHUP reload"; return 1; }
  grep -qF "Status: \"$refused\"" <<<"$(SYSTEMD_COLORS=0 systemctl status --no-pager --lines=0 "$UNIT" 2>&1)" ||
    { bad "systemctl status does not show the refusal"; return 1; }
  expect_bearer "$WORK/api-token-rotated" "the running policy must stay in force after SIGHUP" || return 1

  rm -f "$POLICY_DIR/broken.yaml"
  systemctl reload "$UNIT"; rc_good=$?
  ((rc_good == 0)) || { bad "systemctl reload exited $rc_good once the broken file was removed"; return 1; }
  [[ $(status_text) == "$status_before" ]] || { bad "the status is \"$(status_text)\" after reloading the same policy again, not \"$status_before\""; return 1; }
  DETAIL="systemctl reload exit $rc, reasons in the journal, still injecting; SIGHUP: Status: \"$refused\"; fixed: exit 0"
}
status_starts_with() { [[ $(status_text) == "$1"* ]]; }
unit_is() { [[ $(unit_prop ActiveState)/$(unit_prop SubState) == "$1" ]]; }

check_second_agent() {
  local out rc
  out=$($WIREKEY run --policy "$POLICY_DIR" --state-dir "$STATE_DIR" --pin-dir "$PIN_DIR-second" --proxy-port 15999 --audit /dev/null 2>&1); rc=$?
  ((rc != 0)) || { bad "a second agent on $STATE_DIR started"; return 1; }
  grep -q "another wirekey agent (pid $PID) is running with the state dir" <<<"$out" ||
    { bad "a second agent was refused, but not for the running one (pid $PID): $out"; return 1; }
  [[ ! -e $PIN_DIR-second ]] || { bad "the refused agent made $PIN_DIR-second"; return 1; }
  [[ $(unit_prop MainPID) == "$PID" ]] || { bad "the unit's agent changed while a second one was refused"; return 1; }
  DETAIL="refused (exit $rc): \"$(grep -m 1 "another wirekey agent" <<<"$out")\""
}

check_restart_on_kill() {
  local restarts new
  restarts=$(unit_prop NRestarts)
  kill -KILL "$PID" || { bad "kill -9 $PID failed"; return 1; }
  wait_until "$RESTART_TIMEOUT" restarted_since "$restarts" ||
    { bad "systemd did not restart $UNIT after kill -9 (NRestarts $(unit_prop NRestarts), $(unit_prop ActiveState)/$(unit_prop SubState))"; return 1; }
  wait_for_journal "$READY_RE" 2 "$READY_TIMEOUT" || return 1
  new=$(unit_prop MainPID)
  [[ $new != "$PID" && $new != 0 ]] || { bad "MainPID is $new after the restart"; return 1; }
  PID=$new
  # The killed agent's pinned links kept its programs attached until the new one's were.
  grep -q 'took over from the previous agent' <<<"$(journal)" ||
    { bad "the restarted agent did not take over the killed one's pinned programs (no 'took over' line)"; return 1; }
  expect_bearer "$WORK/api-token-rotated" "after the restart" || return 1
  $WIREKEY status >/dev/null 2>&1 || { bad "wirekey status fails for the restarted agent"; return 1; }
  DETAIL="Restart= brought it back as pid $PID (NRestarts $(unit_prop NRestarts)), took over the killed one's pinned programs, ready again, injecting"
}
restarted_since() {
  (($(unit_prop NRestarts) > $1)) && [[ $(unit_prop ActiveState)/$(unit_prop SubState) == active/running ]]
}

# WatchdogSec=: the agent pings from its event loop; stopped (SIGSTOP), it
# misses the pings and systemd kills it (SIGABRT) and Restart= brings it
# back. A drop-in shortens the period for the check (the unit's own is longer).
check_watchdog() {
  local restarts new t0 first ready_before
  printf '[Service]\nWatchdogSec=%s\n' "$WATCHDOG_SEC" >"$DROPIN_DIR/watchdog.conf"
  systemctl daemon-reload
  ready_before=$(count_matches "$READY_RE")
  systemctl restart "$UNIT" || { bad "systemctl restart $UNIT failed"; return 1; }
  wait_for_journal "$READY_RE" $((ready_before + 1)) "$READY_TIMEOUT" || return 1
  PID=$(unit_prop MainPID)
  [[ $(unit_prop WatchdogUSec) == "${WATCHDOG_SEC}s" ]] || { bad "WatchdogUSec is $(unit_prop WatchdogUSec), not ${WATCHDOG_SEC}s"; return 1; }
  # The pings arrive: systemd moves the watchdog timestamp at each one.
  first=$(unit_prop WatchdogTimestampMonotonic)
  wait_until "$WATCHDOG_SEC" watchdog_moved_from "$first" ||
    { bad "no WATCHDOG=1 from the agent in ${WATCHDOG_SEC}s (WatchdogTimestampMonotonic stays $first)"; return 1; }
  [[ $(unit_prop MainPID) == "$PID" ]] || { bad "the agent was restarted while it pinged the watchdog"; return 1; }

  restarts=$(unit_prop NRestarts)
  ready_before=$(count_matches "$READY_RE")
  t0=$SECONDS
  kill -STOP "$PID" || { bad "kill -STOP $PID failed"; return 1; }
  wait_until "$RESTART_TIMEOUT" restarted_since "$restarts" ||
    { bad "systemd did not restart the stopped agent (NRestarts $(unit_prop NRestarts), $(unit_prop ActiveState)/$(unit_prop SubState))"; return 1; }
  grep -q 'Watchdog timeout' <<<"$(journal)" || { bad "restarted, but the journal has no 'Watchdog timeout'"; return 1; }
  wait_for_journal "$READY_RE" $((ready_before + 1)) "$READY_TIMEOUT" || return 1
  new=$(unit_prop MainPID)
  [[ $new != "$PID" && $new != 0 ]] || { bad "MainPID is $new after the watchdog restart"; return 1; }
  PID=$new
  expect_bearer "$WORK/api-token-rotated" "after the watchdog restart" || return 1
  rm -f "$DROPIN_DIR/watchdog.conf"
  systemctl daemon-reload
  DETAIL="WatchdogSec=${WATCHDOG_SEC}s pinged; SIGSTOP: 'Watchdog timeout', restarted as pid $PID after $((SECONDS - t0))s, injecting"
}

watchdog_moved_from() { (($(unit_prop WatchdogTimestampMonotonic) > $1)); }

check_stop() {
  local result
  systemctl stop "$UNIT" || { bad "systemctl stop $UNIT failed"; return 1; }
  result=$(unit_prop Result)
  [[ $result == success ]] || { bad "$UNIT stopped with Result=$result (ExecMainStatus=$(unit_prop ExecMainStatus))"; return 1; }
  wait_until "$STOP_TIMEOUT" none_attached || { bad "wk_* programs still attached after the stop: $ATTACHED"; return 1; }
  wait_until "$STOP_TIMEOUT" no_pin_dir ||
    { bad "$PIN_DIR still exists after the stop: $(find "$PIN_DIR" -mindepth 1 -maxdepth 1 -printf '%f ' 2>&1)"; return 1; }
  # Programs are freed once their last reference goes; that can lag the exit a little.
  wait_until "$STOP_TIMEOUT" none_loaded || { bad "wk_* programs still loaded after the stop: $LOADED"; return 1; }
  grep -Eq '(^|[^[:alnum:]_])stopped$' <<<"$(journal)" ||
    { bad "the agent did not log 'stopped' (on SIGTERM it detaches, unpins, then logs it)"; return 1; }
  local rc
  $WIREKEY status >/dev/null 2>&1; rc=$?
  ((rc == 3)) || { bad "wirekey status exits $rc after the stop (3: not running)"; return 1; }
  DETAIL="Result=success, 'stopped' logged, nothing attached under $CGROUP_ROOT, no wk_* program $( ((SHARED_KERNEL)) && echo 'held here' || echo loaded), $PIN_DIR gone, wirekey status exits 3"
}

check_metrics() {
  local sock=$STATE_DIR/agent.sock health ready metrics
  health=$(curl -sS --unix-socket "$sock" http://wirekey/healthz 2>&1) || { bad "GET /healthz on $sock: $health"; return 1; }
  ready=$(curl -sS --unix-socket "$sock" http://wirekey/readyz 2>&1) || { bad "GET /readyz on $sock: $ready"; return 1; }
  [[ $health == ok && $ready == ready ]] || { bad "/healthz said '$health', /readyz '$ready'"; return 1; }
  metrics=$(curl -sS --unix-socket "$sock" http://wirekey/metrics 2>&1) || { bad "GET /metrics on $sock: $metrics"; return 1; }
  grep -Eq '^wirekey_requests_injected_total\{[^}]*datapath="proxy"[^}]*\} [1-9]' <<<"$metrics" ||
    { bad "/metrics counts no proxied injection"; return 1; }
  grep -Eq '^wirekey_requests_injected_total\{[^}]*datapath="kernel"[^}]*\} [1-9]' <<<"$metrics" || { bad "/metrics counts no kernel injection"; return 1; }
  grep -q "$(tr -d '\n' <"$WORK/api-token")" <<<"$metrics" && { bad "/metrics holds the credential"; return 1; }
  DETAIL="/healthz ok, /readyz ready, /metrics counts both datapaths' injections, no credential in it"
}

# ---- the list ------------------------------------------------------------------------

CHECKS=(install security start ready-notify attached backfill status inject-proxy inject-kernel not-bound metrics reload-good
        reload-bad second-agent restart-on-kill watchdog stop)

failed=''
for name in "${CHECKS[@]}"; do
  if [[ -n $failed ]]; then
    printf '%-5s %-16s %s\n' '-' "$name" "not run (after $failed failed)"
    continue
  fi
  REASON='' DETAIL=''
  if "check_${name//-/_}"; then
    printf '%-5s %-16s %s\n' ok "$name" "$DETAIL"
  else
    printf '%-5s %-16s %s\n' FAIL "$name" "${REASON:-failed}"
    failed=$name
  fi
done
if [[ -n $failed ]]; then
  log "FAILED at $failed"
  exit 1
fi
log "PASS: ${#CHECKS[@]} checks under systemd $(systemctl --version | sed -n '1s/^systemd \([0-9]*\).*/\1/p')"
