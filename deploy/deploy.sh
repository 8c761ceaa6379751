#!/usr/bin/env bash
# Plain rolling deploy of the compose demo: recreate one app container at a time; the next
# only once HAProxy reports the new one UP and it answers with the new version.
#
#   VERSION=v2 ./deploy/deploy.sh        or    ./deploy/deploy.sh v2 [--timeout SECONDS]
#
# Each `docker compose up -d --no-deps --force-recreate appN` sends SIGTERM to the old
# container's PID 1 (drain-agent): it drains the server in HAProxy, stops the app, and exits;
# compose then starts the new container, whose agent marks it ready once the app is.
# On the first instance that is not UP on the new version in time, it stops (exit 1) and
# leaves the rest on the old version. Roll back with `./deploy/deploy.sh <old version>`.
#
# Environment: VERSION (or the first argument), DEPLOY_TIMEOUT (per instance, default 90 s),
# DEPLOY_SERVICES (default "app1 app2 app3"), DEPLOY_VERSION_URL (inside the container,
# default http://127.0.0.1:8000/version; empty: skip the version check, e.g. for an app
# without one). Everything else (COMPOSE_PROJECT_NAME, COMPOSE_FILE, ZDH_*, SERVICE_WARMUP_S,
# DRAIN_AGENT_START_TIMEOUT ...) goes to docker compose as it is.
set -euo pipefail

usage() { echo "usage: [VERSION=v2] $0 [VERSION] [--timeout SECONDS]" >&2; exit 2; }

version=${VERSION:-}
timeout_s=${DEPLOY_TIMEOUT:-90}
while [ $# -gt 0 ]; do
  case $1 in
    --timeout) [ $# -ge 2 ] || usage; timeout_s=$2; shift 2 ;;
    --timeout=*) timeout_s=${1#--timeout=}; shift ;;
    -h|--help) usage ;;
    -*) echo "deploy.sh: unknown option $1" >&2; usage ;;
    *) [ -z "${version_arg:-}" ] || usage; version_arg=$1; shift ;;
  esac
done
version=${version_arg:-$version}
[ -n "$version" ] || { echo "deploy.sh: no version: give VERSION=v2 or an argument" >&2; usage; }
[[ $version =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] \
  || { echo "deploy.sh: version '$version' is not a valid image tag" >&2; exit 2; }
[[ $timeout_s =~ ^[0-9]+$ ]] && [ "$timeout_s" -gt 0 ] \
  || { echo "deploy.sh: timeout '$timeout_s' must be a whole number of seconds > 0" >&2; exit 2; }
read -r -a services <<<"${DEPLOY_SERVICES:-app1 app2 app3}"
version_url=${DEPLOY_VERSION_URL-http://127.0.0.1:8000/version}

cd "$(dirname "$0")/.."           # the compose file's directory, unless COMPOSE_FILE says otherwise
export SERVICE_VERSION=$version   # the compose file tags the image and sets the app's version with it

began=$(date +%s.%N)
log() { printf '%s %s\n' "$(date +%H:%M:%S.%3N)" "$*"; }
fail() { printf '%s deploy.sh: %s\n' "$(date +%H:%M:%S.%3N)" "$*" >&2; exit 1; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# Where HAProxy's stats page is published (the compose file says 127.0.0.1:${ZDH_STATS_PORT:-8404}).
stats_addr=$(docker compose port haproxy 8404 2>/dev/null || true)
[ -n "$stats_addr" ] || fail "the stack is not up (no haproxy container with a published stats port); start it with: docker compose up -d --wait"
stats_url="http://${stats_addr/0.0.0.0/127.0.0.1}/stats;csv;norefresh"

# HAProxy's status for one server (column 18 of the stats CSV): UP, DOWN, MAINT, DRAIN, ...
status_of() {
  curl -fsS --max-time 2 "$stats_url" 2>/dev/null \
    | awk -F, -v sv="$1" '$1 == "app" && $2 == sv { print $18; found = 1 } END { if (!found) print "unknown" }' \
    || echo "stats unreachable"
}

# The version the running container's app reports (empty when it does not answer).
version_of() {
  docker compose exec -T "$1" python -c '
import json, sys, urllib.request as u
try:
    print(json.load(u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=2))["version"])
except Exception:
    pass' "$version_url" 2>/dev/null || true
}

others_up() {
  local csv
  csv=$(curl -fsS --max-time 2 "$stats_url" 2>/dev/null) || return 1
  awk -F, -v sv="$1" '$1 == "app" && $2 != sv && $2 != "BACKEND" && $2 != "FRONTEND" && $18 == "UP" { n++ }
                      END { print n + 0 }' <<<"$csv"
}

log "deploy $version: building the image ..."
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
docker compose build >"$build_log" 2>&1 || { cat "$build_log" >&2; fail "image build failed"; }
log "deploy $version: image built in $(since "$began")s; rolling ${services[*]}"

for index in "${!services[@]}"; do
  svc=${services[$index]}
  rest=("${services[@]:index+1}")
  old_id=$(docker compose ps -q "$svc" 2>/dev/null || true)
  old_version=${old_id:+$(version_of "$svc")}
  up_elsewhere=$(others_up "$svc" || echo 0)
  [ "${up_elsewhere:-0}" -gt 0 ] \
    || fail "[$svc] no other server is UP in HAProxy: recreating it would cut service; nothing done to $svc${rest:+ ${rest[*]}}"

  log "[$svc] recreating: ${old_version:-?} -> $version (old container ${old_id:0:12}${old_id:+ drains first})"
  t0=$(date +%s.%N)
  if ! out=$(docker compose up -d --no-deps --force-recreate --pull never "$svc" 2>&1); then
    printf '%s\n' "$out" >&2
    fail "[$svc] docker compose up failed; untouched: ${rest[*]:-none}"
  fi
  log "[$svc] old container stopped and new one started after $(since "$t0")s; waiting for HAProxy UP on $version"

  deadline=$(( $(date +%s) + timeout_s ))
  status="?"; seen=""
  while :; do
    status=$(status_of "$svc")
    if [ "$status" = UP ]; then
      if [ -z "$version_url" ]; then break; fi
      seen=$(version_of "$svc")
      [ "$seen" = "$version" ] && break
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      {
        echo "--- last log lines of $svc:"
        docker compose logs --no-log-prefix --tail 12 "$svc" 2>&1 || true
        echo "---"
      } >&2
      fail "[$svc] not UP on $version within ${timeout_s}s (HAProxy status: $status, version answered: ${seen:-none}); deploy halted, still on the old version: ${rest[*]:-none}"
    fi
    sleep 0.2
  done
  log "[$svc] UP on $version, $(since "$t0")s after the recreate began"
done
log "deploy $version: done, ${#services[@]} instances in $(since "$began")s"
