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
# Environment: VERSION (or the first argument), DEPLOY_TIMEOUT (per container, default 90 s),
# DEPLOY_SERVICE (default app), DEPLOY_APP_PORT (the app's port in the container, 8000),
# DEPLOY_VERSION_URL (inside the container, default http://127.0.0.1:8000/version; empty: skip the
# version check, e.g. for an image with no python). Everything else (COMPOSE_PROJECT_NAME,
# COMPOSE_FILE, ZDH_*, SERVICE_WARMUP_S, ...) goes to docker compose as it is.
set -euo pipefail

usage() { echo "usage: [VERSION=v2] $0 [VERSION] [--timeout SECONDS] [--stop-first]" >&2; exit 2; }

version=${VERSION:-}
timeout_s=${DEPLOY_TIMEOUT:-90}
surge=yes
while [ $# -gt 0 ]; do
  case $1 in
    --timeout) [ $# -ge 2 ] || usage; timeout_s=$2; shift 2 ;;
    --timeout=*) timeout_s=${1#--timeout=}; shift ;;
    --stop-first) surge=; shift ;;
    -h|--help) usage ;;
    -*) echo "deploy.sh: unknown option $1" >&2; usage ;;
    *) [ -z "${version_arg:-}" ] || usage; version_arg=$1; shift ;;
  esac
done
version=${version_arg:-$version}
[[ $timeout_s =~ ^[0-9]+$ ]] && [ "$timeout_s" -gt 0 ] \
  || { echo "deploy.sh: timeout '$timeout_s' must be a whole number of seconds > 0" >&2; exit 2; }
service=${DEPLOY_SERVICE:-app}
app_port=${DEPLOY_APP_PORT:-8000}
version_url=${DEPLOY_VERSION_URL-http://127.0.0.1:8000/version}

# The compose file's directory, unless COMPOSE_FILE says otherwise (made absolute first).
if [ -n "${COMPOSE_FILE:-}" ]; then COMPOSE_FILE=$(realpath "$COMPOSE_FILE"); export COMPOSE_FILE; fi
cd "$(dirname "$0")/.."

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
if [ -z "$version" ]; then
  image=$(docker inspect -f '{{.Config.Image}}' "${old_ids[0]}")
  version=${image##*:}
  log "no version given: redeploying the running one, $version"
fi
[[ $version =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] \
  || { echo "deploy.sh: version '$version' is not a valid image tag" >&2; exit 2; }
export SERVICE_VERSION=$version   # the compose file tags the image and sets the app's version with it

# Where HAProxy's stats page is published (the compose file says 127.0.0.1:${ZDH_STATS_PORT:-8404}).
stats_addr=$(docker compose port haproxy 8404 2>/dev/null || true)
[ -n "$stats_addr" ] || fail "the stack is not up (no haproxy container with a published stats port); start it with: docker compose up -d --wait"
stats_url="http://${stats_addr/0.0.0.0/127.0.0.1}/stats;csv;norefresh"

# The stats CSV's servers as "addr status" lines (columns: 2 svname, 18 status, 74 addr).
servers() {
  curl -fsS --max-time 2 "$stats_url" 2>/dev/null \
    | awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
               $2 != "FRONTEND" && $2 != "BACKEND" && $(col["addr"]) != "" { print $(col["addr"]), $(col["status"]) }'
}
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
  curl -fsS --max-time 2 "$stats_url" 2>/dev/null \
    | awk -F, -v a="$addr" 'NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
                             $2 != "FRONTEND" && $2 != "BACKEND" { n[$1]++; if ($(col["addr"]) == a) b = $1 }
                             END { print (b == "" ? 0 : n[b]) }'
}

# Until HAProxy has the container UP and it answers with the new version, or the timeout.
wait_up() {
  local id=$1 deadline status seen=""
  deadline=$(( $(date +%s) + timeout_s ))
  while :; do
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

if [ -n "$surge" ]; then
  slots=$(slots_of "${old_ids[0]}")
  if [ "$slots" -gt 0 ] && [ "${#old_ids[@]}" -ge "$slots" ]; then
    log "all $slots server slots in HAProxy hold the ${#old_ids[@]} containers: no room for a surge container; replacing stop-first"
    surge=
  fi
fi

log "deploy $version: building the image ..."
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
docker compose build "$service" >"$build_log" 2>&1 || { cat "$build_log" >&2; fail "image build failed"; }
log "deploy $version: image built in $(since "$began")s; replacing ${#old_ids[@]} containers ($([ -n "$surge" ] && echo surge || echo stop-first))"

for index in "${!old_ids[@]}"; do
  old=${old_ids[$index]}
  rest=("${old_ids[@]:index+1}")
  t0=$(date +%s.%N)
  if [ -n "$surge" ]; then
    new=$(start_one) || fail "[$(short "$old")] could not start a new container; untouched: $(ids "$old" "${rest[@]}")"
    log "[$(short "$old")] new container $(short "$new") started; waiting for HAProxy UP on $version"
    if ! why=$(wait_up "$new"); then
      retire "$new" || true
      fail "[$(short "$new")] $why; it was removed; deploy halted, still on the old version: $(ids "$old" "${rest[@]}")"
    fi
    [ "$(up_except "$old")" -gt 0 ] || fail "[$(short "$old")] no other server is UP in HAProxy (not even $(short "$new")); nothing done to $(ids "$old" "${rest[@]}")"
    log "[$(short "$old")] $(short "$new") UP on $version after $(since "$t0")s; stopping the old one (it drains first)"
    t1=$(date +%s.%N)
    retire "$old" || fail "[$(short "$old")] docker stop failed"
    log "[$(short "$old")] old container drained and stopped in $(since "$t1")s"
  else
    [ "$(up_except "$old")" -gt 0 ] || fail "[$(short "$old")] no other server is UP in HAProxy: stopping it would cut service; nothing done to $(ids "$old" "${rest[@]}")"
    log "[$(short "$old")] stopping (it drains first)"
    retire "$old" || fail "[$(short "$old")] docker stop failed"
    log "[$(short "$old")] old container drained and stopped in $(since "$t0")s; starting its replacement"
    new=$(start_one) || fail "[$(short "$old")] could not start a replacement; untouched: $(ids "${rest[@]}")"
    if ! why=$(wait_up "$new"); then
      fail "[$(short "$new")] $why; it stays (DOWN in HAProxy, sent nothing) for the next deploy to replace; deploy halted, still on the old version: $(ids "${rest[@]}")"
    fi
    log "[$(short "$new")] UP on $version, $(since "$t0")s after the stop began"
  fi
done
log "deploy $version: done, ${#old_ids[@]} containers in $(since "$began")s"
