#!/usr/bin/env bash
# Plain rolling deploy of the compose demo: replace the app service's containers one at a time;
# the next only once HAProxy's own health check has the new one UP and it answers with the new
# version. The same rules as `rollout restart` (deploy/strategies/rolling.py).
#
#   ./deploy/deploy.sh v2                 # surge (default): new container first, then the old one stops
#   ./deploy/deploy.sh v2 --stop-first    # for hosts with no room for one more container
#   ./deploy/deploy.sh                    # no version: redeploy the version that runs (restart all)
#
# Surge: `docker compose up --scale app=N+1 --no-recreate` starts one container of the new
# version; once it is UP in HAProxy, `docker stop` sends SIGTERM to an old container's PID 1
# (drain-agent): it answers `drain` to HAProxy's agent-check, waits for zero sessions, stops the
# app and exits. Capacity never drops below N. Stop-first does the same in the other order (and
# is what a surge falls back to when every server slot in HAProxy already holds a container).
# Rules: an old container is stopped only while another server is exactly UP; a new one that is
# not UP on the new version in time halts the deploy (exit 1) and the containers not yet replaced
# are listed; they keep running the old version. After any halt the service still has N
# containers: a broken surge container is removed (its old one still serves), a broken
# stop-first replacement stays (DOWN in HAProxy, sent nothing) for the next deploy, the fix
# forward, to replace, as `rollout restart` does. A stopped or paused container of
# the service is refused up front (compose would start the stopped one instead of a new one,
# and cannot scale around a paused one).
#
# Watch and rollback: each new container is watched from the moment it is UP until the deploy
# ends and for --watch SECONDS after it (DEPLOY_WATCH, default 10; 0: off): it fails when it
# leaves UP or goes DOWN, restarts (Docker's restart count or start time changes), or its share
# of errors (HAProxy's hrsp_5xx + econ + eresp per request) exceeds the old containers' by more
# than DEPLOY_MAX_ERROR_RATE (0.01). A failure, or a new container that never gets UP, rolls
# back: every container already replaced is replaced again by the old image with the old
# container's values of the compose file's variables, by the same rules; --no-rollback
# (DEPLOY_ROLLBACK=0) halts instead, as described below. The same rules as `rollout deploy`.
#
# Environment: VERSION (or the first argument), DEPLOY_TIMEOUT (per container, default 90 s),
# DEPLOY_SERVICE (default app), DEPLOY_LB_SERVICE (the HAProxy service; default: the one whose
# image is haproxy), DEPLOY_APP_PORT (the app's port in the container, 8000),
# DEPLOY_VERSION_URL (empty by default: a new container counts as on VERSION because deploy.sh
# created it from that image, and as started once HAProxy's own check has it UP; set, e.g.
# http://127.0.0.1:8000/version, the app's own word is asked too, with python inside the
# container). Everything else (COMPOSE_PROJECT_NAME,
# COMPOSE_FILE, ZDH_*, SERVICE_WARMUP_S, ...) goes to docker compose as it is.
set -euo pipefail

usage() { echo "usage: [VERSION=v2] $0 [VERSION] [--timeout SECONDS] [--stop-first] [--watch SECONDS] [--no-rollback]" >&2; exit 2; }

version=${VERSION:-}
timeout_s=${DEPLOY_TIMEOUT:-90}
watch_s=${DEPLOY_WATCH:-10}
rollback=${DEPLOY_ROLLBACK:-1}
max_error_rate=${DEPLOY_MAX_ERROR_RATE:-0.01}
surge=yes
while [ $# -gt 0 ]; do
  case $1 in
    --timeout) [ $# -ge 2 ] || usage; timeout_s=$2; shift 2 ;;
    --timeout=*) timeout_s=${1#--timeout=}; shift ;;
    --watch) [ $# -ge 2 ] || usage; watch_s=$2; shift 2 ;;
    --watch=*) watch_s=${1#--watch=}; shift ;;
    --no-rollback) rollback=0; shift ;;
    --stop-first) surge=; shift ;;
    -h|--help) usage ;;
    -*) echo "deploy.sh: unknown option $1" >&2; usage ;;
    *) [ -z "${version_arg:-}" ] || usage; version_arg=$1; shift ;;
  esac
done
version=${version_arg:-$version}
[[ $timeout_s =~ ^[0-9]+$ ]] && [ "$timeout_s" -gt 0 ] \
  || { echo "deploy.sh: timeout '$timeout_s' must be a whole number of seconds > 0" >&2; exit 2; }
[[ $watch_s =~ ^[0-9]+$ ]] && [ "$watch_s" -le 3600 ] \
  || { echo "deploy.sh: watch '$watch_s' must be a whole number of seconds, 0..3600" >&2; exit 2; }
[[ $rollback =~ ^[01]$ ]] || { echo "deploy.sh: DEPLOY_ROLLBACK must be 0 or 1" >&2; exit 2; }
[[ $max_error_rate =~ ^(0(\.[0-9]+)?|1(\.0+)?)$ ]] \
  || { echo "deploy.sh: DEPLOY_MAX_ERROR_RATE '$max_error_rate' must be a share from 0 to 1" >&2; exit 2; }
service=${DEPLOY_SERVICE:-app}
app_port=${DEPLOY_APP_PORT:-8000}
version_url=${DEPLOY_VERSION_URL-}

# The tools it runs, checked before anything else.
for tool in docker curl awk realpath flock; do
  command -v "$tool" >/dev/null || { echo "deploy.sh: '$tool' is needed and not on PATH" >&2; exit 1; }
done
case "$(date +%N)" in *[!0-9]* | "") echo "deploy.sh: GNU date is needed (date +%N)" >&2; exit 1 ;; esac

# The project as compose finds it: COMPOSE_FILE (each file made absolute), else the current
# directory's compose file; run it from your project's directory (or, here, the repo root).
if [ -n "${COMPOSE_FILE:-}" ]; then
  IFS="${COMPOSE_PATH_SEPARATOR:-:}" read -r -a files <<<"$COMPOSE_FILE"
  COMPOSE_FILE=$(for f in "${files[@]}"; do realpath "$f"; done | paste -sd "${COMPOSE_PATH_SEPARATOR:-:}")
  export COMPOSE_FILE
fi

began=$(date +%s.%N)
log() { printf '%s %s\n' "$(date +%H:%M:%S.%3N)" "$*"; }
fail() { printf '%s deploy.sh: %s\n' "$(date +%H:%M:%S.%3N)" "$*" >&2; exit 1; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

read -r -a old_ids <<<"$(docker compose ps -q "$service" 2>/dev/null | tr '\n' ' ')"
[ "${#old_ids[@]}" -gt 0 ] || fail "no running container of '$service'; start the stack with: docker compose up -d --wait"

# `up --scale N+1` starts a stopped container of the service (old version, old settings) before
# it creates a new one, and fails on a paused one: refuse both up front.
stopped=$(docker compose ps -a --status exited --status created --status dead --format '{{.Name}}' "$service" | tr '\n' ' ')
stopped=${stopped% }
[ -z "$stopped" ] || fail "stopped containers of '$service': $stopped; a new container would be one of them started again. Start them (docker start $stopped) or remove them (docker rm $stopped) first"
paused=$(docker compose ps -a --status paused --format '{{.Name}}' "$service" | tr '\n' ' ')
paused=${paused% }
[ -z "$paused" ] || fail "paused containers of '$service': $paused; compose cannot scale the service around them. Unpause them (docker unpause $paused) or remove them (docker rm -f $paused) first"
old_image=$(docker inspect -f '{{.Config.Image}}' "${old_ids[0]}")
prev_version=${old_image##*:}   # what a rollback goes back to, with the old container's variables
if [ -z "$version" ]; then
  version=$prev_version
  log "no version given: redeploying the running one, $version"
fi
[[ $version =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] \
  || { echo "deploy.sh: version '$version' is not a valid image tag" >&2; exit 2; }
export SERVICE_VERSION=$version   # the compose file tags the image and sets the app's version with it

# One deploy at a time per compose project, with `rollout --engine docker` too: an flock on
# .zdh-deploy-<project>.lock beside the compose file (the kernel drops it when we die, however).
project=$(docker inspect -f '{{index .Config.Labels "com.docker.compose.project"}}' "${old_ids[0]}")
first_file=${COMPOSE_FILE:-$PWD/docker-compose.yml}
first_file=${first_file%%"${COMPOSE_PATH_SEPARATOR:-:}"*}
lockfile="$(dirname "$first_file")/.zdh-deploy-$project.lock"  # beside the first file, as rollout's
exec 9<>"$lockfile" || fail "cannot open the deploy lock $lockfile"
flock -n 9 || fail "another deploy holds this stack: $(head -c 300 "$lockfile"); wait for it, or stop that process (the lock goes with it: $lockfile)"
lock_info="{\"pid\": $$, \"host\": \"$(hostname)\", \"command\": \"deploy.sh ${version:-}\", \"since\": $(date +%s)"
printf '%s}\n' "$lock_info" >"$lockfile"
trap 'printf "%s, \"done\": true}\n" "$lock_info" >"$lockfile"' EXIT

# Where HAProxy's stats page is published (the compose file says 127.0.0.1:${ZDH_STATS_PORT:-8404}).
# The HAProxy service: DEPLOY_LB_SERVICE, else the one running service whose image is haproxy.
lb=${DEPLOY_LB_SERVICE:-}
if [ -z "$lb" ]; then
  lb=$(docker compose ps --format '{{.Service}} {{.Image}}' 2>/dev/null \
       | awk '{ n = split($2, p, "/"); if (p[n] ~ /^haproxy/) print $1 }' | sort -u)
  [ "$(wc -w <<<"$lb")" -le 1 ] || fail "several services run HAProxy ($(echo $lb)): say which with DEPLOY_LB_SERVICE"
fi
stats_addr=$([ -n "$lb" ] && docker compose port "$lb" 8404 2>/dev/null || true)
[ -n "$stats_addr" ] || fail "the stack is not up (no ${lb:-HAProxy} container with a published stats port 8404; DEPLOY_LB_SERVICE names it); start it with: docker compose up -d --wait"
stats_url="http://${stats_addr/0.0.0.0/127.0.0.1}/stats;csv;norefresh"

# HAProxy's stats read as CSV, not split on commas: a failing check's reason (which the app
# controls) is quoted into last_chk and may hold a comma. One line per server row:
# "backend addr req_tot errors chkdown status" (addr "-" for an empty slot; errors: 5xx +
# failed connections + cut responses; status last, as it may be two words: "UP 1/2").
csv_awk='function csv(line, f,   n, i, c, q, v) {
  n = 0; v = ""; q = 0
  for (i = 1; i <= length(line); i++) {
    c = substr(line, i, 1)
    if (q) { if (c != "\"") v = v c; else if (substr(line, i + 1, 1) == "\"") { v = v c; i++ } else q = 0 }
    else if (c == "\"") q = 1
    else if (c == ",") { f[++n] = v; v = "" }
    else v = v c
  }
  f[++n] = v
  return n
}'
stat_rows() {
  curl -fsS --max-time 2 "$stats_url" 2>/dev/null | awk "$csv_awk"'
    NR == 1 { sub(/^# /, ""); n = csv($0, h); for (i = 1; i <= n; i++) col[h[i]] = i; next }
    { csv($0, f) }
    f[2] != "FRONTEND" && f[2] != "BACKEND" {
      print f[1], (f[col["addr"]] == "" ? "-" : f[col["addr"]]), f[col["req_tot"]] + 0,
            f[col["hrsp_5xx"]] + f[col["econ"]] + f[col["eresp"]], f[col["chkdown"]] + 0, f[col["status"]] }'
}
# The servers as "addr status" lines.
servers() { stat_rows | awk '$2 != "-" { s = $6; for (i = 7; i <= NF; i++) s = s " " $i; print $2, s }'; }
address_of() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" | awk '{print $1}'; }
# HAProxy's status for a container, found by its address, as the agent finds its own row.
status_of() {
  local addr; addr="$(address_of "$1"):$app_port"
  servers | awk -v a="$addr" '$1 == a { $1 = ""; sub(/^ /, ""); print; found = 1 } END { if (!found) print "missing" }'
}
# Servers UP, not counting this container's: exactly "UP" (not "UP 1/2", a server on its way down).
up_except() {
  local addr; addr="$(address_of "$1"):$app_port"
  servers | awk -v a="$addr" '$1 != a && $2 == "UP" && NF == 2 { n++ } END { print n + 0 }'
}
version_of() {
  [ -n "$version_url" ] || { echo "$version"; return; }
  docker exec "$1" python -c '
import json, sys, urllib.request as u
try:
    print(json.load(u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=2))["version"])
except Exception:
    pass' "$version_url" 2>/dev/null || true
}
short() { echo "${1:0:12}"; }
# Short ids, space-separated ("none" for no id).
ids() { local out="" id; for id in "$@"; do out+="${out:+ }$(short "$id")"; done; echo "${out:-none}"; }
# How many server slots the backend holding this container has in HAProxy (server-template).
slots_of() {
  local addr; addr="$(address_of "$1"):$app_port"
  stat_rows | awk -v a="$addr" '{ n[$1]++; if ($2 == a) b = $1 } END { print (b == "" ? 0 : n[b]) }'
}

# Until HAProxy has the container UP and it answers with the new version, or the timeout; the
# containers already UP are watched meanwhile.
wait_up() {
  local id=$1 deadline status seen=""
  deadline=$(( $(date +%s) + timeout_s ))
  while :; do
    if ! watch_check; then echo "watch failed: $watch_why"; return 1; fi
    status=$(status_of "$id")
    if [ "$status" = UP ]; then
      seen=$(version_of "$id")
      [ "$seen" = "$version" ] && return 0
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      { echo "--- last log lines of $(short "$id"):"; docker logs --tail 12 "$id" 2>&1 || true; echo "---"; } >&2
      echo "not UP on $version within ${timeout_s}s (HAProxy status: $status, version answered: ${seen:-none})"
      return 1
    fi
    sleep 0.2
  done
}
# One more container of the service, on the new version; prints its id.
start_one() {
  local before after id count
  before=$(docker compose ps -q "$service" | sort)
  count=$(( $(wc -l <<<"$before") + 1 ))
  docker compose up -d --no-deps --no-recreate --scale "$service=$count" "$service" >"$build_log" 2>&1 \
    || { cat "$build_log" >&2; return 1; }
  after=$(docker compose ps -q "$service" | sort)
  id=$(comm -13 <(echo "$before") <(echo "$after") | head -1)
  [ -n "$id" ] && echo "$id"
}
# docker stop waits the container's own grace period (compose's stop_grace_period) before SIGKILL.
retire() { docker stop "$1" >/dev/null && docker rm "$1" >/dev/null; }

# -- the watch ------------------------------------------------------------------------------
# Every server row as "addr requests errors downs status", from HAProxy's counters.
counters() { stat_rows | awk '$2 != "-"' | cut -d' ' -f2-; }
life() { docker inspect -f '{{.RestartCount}} {{.State.StartedAt}}' "$1" 2>/dev/null || echo gone; }
declare -A fresh=() base_req=() base_err=() base_down=() base_life=() new_addr=()
declare -A old_base_req=() old_base_err=() old_req=() old_err=()
watched=()
# A new container: its address is never counted as the old version's.
mark_fresh() { fresh["$(address_of "$1"):$app_port"]=1; }
# From now on (it is UP) a new container is watched, against its counters at this moment.
watch_add() {
  local id=$1 addr row
  [ "$watch_s" -gt 0 ] || return 0
  addr="$(address_of "$id"):$app_port"
  row=$(counters | awk -v a="$addr" '$1 == a')
  [ -n "$row" ] || return 0
  new_addr[$id]=$addr
  read -r _ base_req[$id] base_err[$id] base_down[$id] _ <<<"$row"
  base_life[$id]=$(life "$id")
  watched+=("$id")
}
# Exit 1 with the reason in $watch_why when the watch fails; 0 while all is well. Run it in
# this shell (not in $(...)) where the old containers' figures must be kept.
watch_why=""
watch_check() {
  watch_why=""
  [ "$watch_s" -gt 0 ] || return 0
  local rows id addr req err down status nreq=0 nerr=0 oreq=0 oerr=0
  rows=$(counters) || return 0   # HAProxy unreachable for a moment: no verdict
  [ -n "$rows" ] || return 0
  for id in "${watched[@]}"; do
    addr=${new_addr[$id]}
    read -r _ req err down status < <(awk -v a="$addr" '$1 == a' <<<"$rows"; echo "$addr 0 0 0 missing")
    [ "$status" != missing ] || { watch_why="[$(short "$id")] is gone from HAProxy"; return 1; }
    [[ $status == UP* ]] || { watch_why="[$(short "$id")] left UP: HAProxy says $status"; return 1; }
    [ "$down" -le "${base_down[$id]}" ] || { watch_why="[$(short "$id")] went DOWN in HAProxy since it was UP"; return 1; }
    [ "$(life "$id")" = "${base_life[$id]}" ] || { watch_why="[$(short "$id")] restarted: it crashed or exited"; return 1; }
    [ "$req" -lt "${base_req[$id]}" ] || nreq=$(( nreq + req - base_req[$id] ))
    [ "$err" -lt "${base_err[$id]}" ] || nerr=$(( nerr + err - base_err[$id] ))
  done
  # The old containers: each one's growth since the deploy began, while it was UP.
  while read -r addr req err down status; do
    [ -z "${fresh[$addr]:-}" ] || continue
    if [ -z "${old_base_req[$addr]:-}" ]; then old_base_req[$addr]=$req; old_base_err[$addr]=$err; fi
    if [ "$status" = UP ]; then old_req[$addr]=$req; old_err[$addr]=$err; fi
  done <<<"$rows"
  for addr in "${!old_req[@]}"; do
    oreq=$(( oreq + old_req[$addr] - old_base_req[$addr] )); oerr=$(( oerr + old_err[$addr] - old_base_err[$addr] ))
  done
  [ "$nerr" -gt 0 ] || return 0
  watch_why=$(awk -v ne="$nerr" -v nr="$nreq" -v oe="$oerr" -v or="$oreq" -v m="$max_error_rate" 'BEGIN {
        new = ne / (nr > ne ? nr : ne); old = (or > 0 ? oe / or : 0)
        if (new > old + m) printf "error share %.1f%% (%d of %d requests) against %.1f%% on the old version; allowed: +%.1f%% (DEPLOY_MAX_ERROR_RATE)", 100 * new, ne, nr, 100 * old, 100 * m
      }')
  [ -z "$watch_why" ]
}

# -- rollback -------------------------------------------------------------------------------
changed=()        # new containers, in order
old_serving=()    # for each: its old container while that one still serves (surge), else ""
# The old container's values for the variables the compose file passes through (${VAR...}):
# what the rollback gives compose again, so a bad release's --env does not come back with it.
compose_files() { local IFS=:; for f in ${COMPOSE_FILE:-docker-compose.yml}; do echo "$f"; done; }
old_env=$(docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "${old_ids[0]}")
restore_old_env() {
  local name value
  for name in $(compose_files | xargs grep -ho '\${[A-Za-z_][A-Za-z0-9_]*' 2>/dev/null | cut -c3- | sort -u); do
    case $name in SERVICE_VERSION|ZDH_*|COMPOSE_*) continue ;; esac
    if value=$(grep -m1 "^$name=" <<<"$old_env"); then export "$name=${value#*=}"; else unset "$name"; fi
  done
}
# Halt: with rollback, every changed container back on the old release; then exit 1.
halt() {
  local why=$1 tail=${2:-} i new old back why_back failed=""
  if [ "$rollback" != 1 ] || [ "${#changed[@]}" -eq 0 ]; then fail "$why$tail"; fi
  log "deploy.sh: $why" >&2
  log "rolling back ${#changed[@]} container(s) to $prev_version"
  watch_s=0 version=$prev_version
  export SERVICE_VERSION=$prev_version
  restore_old_env
  for i in "${!changed[@]}"; do
    new=${changed[$i]} old=${old_serving[$i]}
    if [ -n "$old" ]; then   # surge: its old one still serves; only take the new one away
      retire "$new" || failed+=" $(short "$new")"
      log "[$(short "$new")] removed; $(short "$old") kept serving"
      continue
    fi
    if [ -n "$surge" ]; then
      back=$(start_one) && why_back=$(wait_up "$back") && retire "$new" \
        && { log "[$(short "$new")] replaced by $(short "$back") on $prev_version"; continue; }
    else
      if [ "$(up_except "$new")" -gt 0 ] && retire "$new" && back=$(start_one) && why_back=$(wait_up "$back"); then
        log "[$(short "$new")] replaced by $(short "$back") on $prev_version"; continue
      fi
    fi
    failed+=" $(short "$new")${why_back:+ ($why_back)}"
  done
  [ -z "$failed" ] || fail "$why; rollback FAILED for:$failed"
  fail "$why; rolled back to $prev_version: ${#changed[@]} container(s)$tail"
}

if [ -n "$surge" ]; then
  slots=$(slots_of "${old_ids[0]}")
  if [ "$slots" -gt 0 ] && [ "${#old_ids[@]}" -ge "$slots" ]; then
    log "all $slots server slots in HAProxy hold the ${#old_ids[@]} containers: no room for a surge container; replacing stop-first"
    surge=
  fi
fi

log "deploy $version: building the image ..."
build_log=$(mktemp)
trap 'rm -f "$build_log"; printf "%s, \"done\": true}\n" "$lock_info" >"$lockfile"' EXIT
docker compose build "$service" >"$build_log" 2>&1 || { cat "$build_log" >&2; fail "image build failed"; }
log "deploy $version: image built in $(since "$began")s; replacing ${#old_ids[@]} containers ($([ -n "$surge" ] && echo surge || echo stop-first))"

watch_check || true   # the old containers' counters from here on
for index in "${!old_ids[@]}"; do
  old=${old_ids[$index]}
  rest=("${old_ids[@]:index+1}")
  t0=$(date +%s.%N)
  if [ -n "$surge" ]; then
    new=$(start_one) || halt "[$(short "$old")] could not start a new container" "; untouched: $(ids "$old" "${rest[@]}")"
    mark_fresh "$new"
    changed+=("$new") old_serving+=("$old")
    log "[$(short "$old")] new container $(short "$new") started; waiting for HAProxy UP on $version"
    if ! why=$(wait_up "$new"); then
      [ "$rollback" = 1 ] || { retire "$new" || true; fail "[$(short "$new")] $why; it was removed; deploy halted, still on the old version: $(ids "$old" "${rest[@]}")"; }
      halt "[$(short "$new")] $why" "; untouched: $(ids "$old" "${rest[@]}")"
    fi
    watch_add "$new"
    watch_check || halt "watch failed: $watch_why" "; untouched: $(ids "$old" "${rest[@]}")"   # keeps $old's last figures
    [ "$(up_except "$old")" -gt 0 ] || halt "[$(short "$old")] no other server is UP in HAProxy (not even $(short "$new")); nothing done to $(ids "$old" "${rest[@]}")"
    log "[$(short "$old")] $(short "$new") UP on $version after $(since "$t0")s; stopping the old one (it drains first)"
    t1=$(date +%s.%N)
    retire "$old" || halt "[$(short "$old")] docker stop failed"
    old_serving[${#old_serving[@]}-1]=""
    log "[$(short "$old")] old container drained and stopped in $(since "$t1")s"
  else
    watch_check || halt "watch failed: $watch_why" "; untouched: $(ids "$old" "${rest[@]}")"
    [ "$(up_except "$old")" -gt 0 ] || halt "[$(short "$old")] no other server is UP in HAProxy: stopping it would cut service; nothing done to $(ids "$old" "${rest[@]}")"
    log "[$(short "$old")] stopping (it drains first)"
    retire "$old" || halt "[$(short "$old")] docker stop failed"
    log "[$(short "$old")] old container drained and stopped in $(since "$t0")s; starting its replacement"
    new=$(start_one) || halt "[$(short "$old")] could not start a replacement" "; untouched: $(ids "${rest[@]}")"
    mark_fresh "$new"
    changed+=("$new") old_serving+=("")
    if ! why=$(wait_up "$new"); then
      [ "$rollback" = 1 ] || fail "[$(short "$new")] $why; it stays (DOWN in HAProxy, sent nothing) for the next deploy to replace; deploy halted, still on the old version: $(ids "${rest[@]}")"
      halt "[$(short "$new")] $why" "; untouched: $(ids "${rest[@]}")"
    fi
    watch_add "$new"
    log "[$(short "$new")] UP on $version, $(since "$t0")s after the stop began"
  fi
done
if [ "$watch_s" -gt 0 ]; then
  log "deploy $version: watching the new containers for ${watch_s}s"
  watch_end=$(( $(date +%s) + watch_s ))
  while [ "$(date +%s)" -lt "$watch_end" ]; do
    watch_check || halt "watch failed: $watch_why" "; untouched: none"
    sleep 0.5
  done
fi
log "deploy $version: done, ${#old_ids[@]} containers in $(since "$began")s"
