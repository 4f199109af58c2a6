#!/usr/bin/env bash
# A local two-node Ray cluster plus an MLflow tracking server, for testing `ray-distill submit`
# and the plain `ray job submit` path on one machine. The dashboard (Jobs API) and the MLflow server
# listen on 127.0.0.1; Ray registers its nodes under the machine's own address (it replaces 127.0.0.1).
#
#   cluster/local_cluster.sh start      # head + worker node + mlflow server; prints what to export
#   . "$RD_CLUSTER_DIR/cluster.env"     # RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH, MLFLOW_TRACKING_URI, ...
#   ray job submit --address "$RAY_ADDRESS" --working-dir . -- ray-distill run jobs/cluster_smoke.yaml
#   cluster/local_cluster.sh status
#   cluster/local_cluster.sh stop       # stops its jobs, then exactly the processes this script started
#
# Settings (environment variables, all optional):
#   RD_CLUSTER_DIR      state dir: pids, ports, token, Ray temp dir, mlflow.db   (/tmp/rd-cluster-$USER)
#   RD_RAY_PORT         GCS port of the head node                                (a free port)
#   RD_DASHBOARD_PORT   dashboard / Jobs API port                                 (a free port)
#   RD_MLFLOW_PORT      mlflow server port                                        (a free port)
#   RD_HEAD_CPUS        logical CPUs of the head node                             (2)
#                       (>= 2: with one CPU, an actor pool on the head can hold it while a Ray Data
#                       SPREAD task waits for it — seen as a hang in the select stage)
#   RD_WORKER_CPUS      logical CPUs of the worker node (it also gets {"worker": 1}) (2)
#   RD_NO_MLFLOW=1      do not start the mlflow server
#   RAY_DISTILL_STORAGE the nodes' storage root (relative job `storage` resolves under it) ($RD_CLUSTER_DIR/storage)
#   RD_PYTHON           python of the environment with ray/mlflow                (python3 on PATH)
#
# Authentication: Ray's token auth stays on. The cluster runs with RAY_AUTH_MODE=token and a token
# of its own: $RAY_AUTH_TOKEN if set, otherwise a fresh random token written to
# $RD_CLUSTER_DIR/auth_token (mode 600) and passed as RAY_AUTH_TOKEN_PATH. The shared default
# ~/.ray/auth_token is never written. Clients (ray job submit, JobSubmissionClient, ray.init) need
# the same RAY_AUTH_MODE=token + token: source cluster.env.
#
# The nodes' environment, which every job's driver and workers inherit (as a cluster image or a KubeRay pod
# spec would set it): MLFLOW_TRACKING_URI (the mlflow server below) and RAY_DISTILL_STORAGE (a directory
# both nodes reach, since they share this machine). So a plain `ray job submit … -- ray-distill run JOB`
# logs to the server and writes under $RAY_DISTILL_STORAGE, never into Ray's copy of the working dir.
#
# Every Ray/MLflow process gets its own ports (no defaults, so other clusters on the same machine
# are untouched) and the Ray processes of each node their own --temp-dir, TMPDIR and HF_HOME. Each node is started with
# `ray start --block` in its own session; `stop` signals those sessions by process-group id, never
# `ray stop` (which would stop every Ray cluster of this user on the machine).
set -euo pipefail

DIR="${RD_CLUSTER_DIR:-/tmp/rd-cluster-${USER:-$(id -un)}}"
PY="${RD_PYTHON:-python3}"

find_bin() {  # find_bin NAME: the NAME next to $PY (its virtualenv), else on PATH
  local here
  here="$(dirname "$(command -v "$PY" || echo /nonexistent/python)")/$1"
  if [[ -x "$here" ]]; then echo "$here"; else command -v "$1" || { echo "local_cluster: $1 not found (activate the venv or set RD_PYTHON)" >&2; return 1; }; fi
}

free_port() {
  "$PY" - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

wait_for() {  # wait_for SECONDS NAME DESCRIPTION CMD...: retry CMD until it succeeds, while process NAME lives
  local deadline=$((SECONDS + $1)) name="$2" what="$3"; shift 3
  until "$@" >/dev/null 2>&1; do
    if ! pid_alive "$name"; then echo "local_cluster: $name exited while waiting for $what (see $DIR/$name.log)" >&2; return 1; fi
    if ((SECONDS >= deadline)); then echo "local_cluster: timed out waiting for $what" >&2; return 1; fi
    sleep 1
  done
}

start_bg() {  # start_bg NAME LOGFILE CMD...: run CMD in a new session, record its pid (= its pgid)
  local name="$1" log="$2"; shift 2
  setsid "$@" >"$log" 2>&1 < /dev/null &
  echo $! > "$DIR/$name.pid"
}

dashboard_get() {  # dashboard_get PORT PATH: GET from the dashboard with the token (it answers 401 without)
  "$PY" - "$1" "$2" <<'EOF'
import sys, urllib.request
from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}{sys.argv[2]}", headers=get_auth_headers_if_auth_enabled({}))
sys.stdout.write(urllib.request.urlopen(req, timeout=2).read().decode())
EOF
}

worker_joined() {  # worker_joined PORT: two live nodes, one with the {"worker": 1} resource
  dashboard_get "$1" "/nodes?view=summary" | "$PY" -c '
import json, sys
nodes = json.load(sys.stdin)["data"]["summary"]
alive = [n for n in nodes if n["raylet"]["state"] == "ALIVE"]
assert len(alive) >= 2 and any("worker" in n["raylet"].get("resourcesTotal", {}) for n in alive), alive'
}

pid_alive() { [[ -f "$DIR/$1.pid" ]] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

stop_groups() {  # stop_groups NAME...: SIGTERM the process groups we started, wait, SIGKILL what is left
  local name pid pids=()
  for name in "$@"; do
    [[ -f "$DIR/$name.pid" ]] || continue
    pid="$(cat "$DIR/$name.pid")"
    if kill -0 -- "-$pid" 2>/dev/null; then kill -TERM -- "-$pid" 2>/dev/null || true; pids+=("$pid"); fi
  done
  local deadline=$((SECONDS + 8)) alive   # gcs_server and `ray start --block` linger after SIGTERM
  while ((SECONDS < deadline)); do
    alive=0
    for pid in "${pids[@]}"; do if kill -0 -- "-$pid" 2>/dev/null; then alive=1; fi; done
    ((alive)) || break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  for name in "$@"; do rm -f "$DIR/$name.pid"; done
}

cmd_start() {
  if pid_alive head; then echo "local_cluster: already running (state in $DIR); stop it first" >&2; exit 1; fi
  started=0
  trap 'if ((started == 0)); then echo "local_cluster: start failed; stopping what was started" >&2; cmd_stop; fi' EXIT
  local RAY_BIN MLFLOW_BIN=""
  RAY_BIN="$(find_bin ray)"
  [[ -n "${RD_NO_MLFLOW:-}" ]] || MLFLOW_BIN="$(find_bin mlflow)"
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  local ray_port="${RD_RAY_PORT:-$(free_port)}" dash_port="${RD_DASHBOARD_PORT:-$(free_port)}"
  local mlflow_port="${RD_MLFLOW_PORT:-$(free_port)}"
  local head_cpus="${RD_HEAD_CPUS:-2}" worker_cpus="${RD_WORKER_CPUS:-2}"
  # One Ray temp dir per node: two nodes sharing one would share runtime_resources/, and the second
  # node's runtime-env agent re-extracting the job's working_dir deletes the driver's cwd under it.
  mkdir -p "$DIR/ray-head" "$DIR/ray-worker"
  # Nodes share nothing but storage: each has its own TMPDIR and Hugging Face cache (HF_HOME), so what a
  # process materialises locally (a model copied from a storage URL, a hub download) is its node's own.
  mkdir -p "$DIR/node-head/tmp" "$DIR/node-head/hf" "$DIR/node-worker/tmp" "$DIR/node-worker/hf"

  # Token auth, on. A token of this cluster's own (never the shared ~/.ray/auth_token).
  export RAY_AUTH_MODE=token
  if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
    (umask 077; "$PY" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$DIR/auth_token")
    export RAY_AUTH_TOKEN_PATH="$DIR/auth_token"
  fi

  # What jobs inherit from the nodes: where relative `storage` goes, and the MLflow server (started below).
  export RAY_DISTILL_STORAGE="${RAY_DISTILL_STORAGE:-$DIR/storage}"
  mkdir -p "$RAY_DISTILL_STORAGE"
  [[ -n "${RD_NO_MLFLOW:-}" ]] || export MLFLOW_TRACKING_URI="http://127.0.0.1:$mlflow_port"

  # Every process of this cluster (Ray workers included) resolves "the local cluster" to this one, not to
  # another Ray cluster on the same machine ("Found multiple active Ray instances").
  export RAY_ADDRESS="127.0.0.1:$ray_port"

  # Per-node ports: every port Ray would otherwise default (52365, 10001, ...) is set explicitly.
  local p=()
  for _ in $(seq 1 12); do p+=("$(free_port)"); done
  local common=(--disable-usage-stats --block)
  start_bg head "$DIR/head.log" env TMPDIR="$DIR/node-head/tmp" HF_HOME="$DIR/node-head/hf" "$RAY_BIN" start --head --port "$ray_port" --num-cpus "$head_cpus" \
    --include-dashboard true --dashboard-host 127.0.0.1 --dashboard-port "$dash_port" \
    --ray-client-server-port "${p[0]}" --node-manager-port "${p[1]}" --object-manager-port "${p[2]}" \
    --dashboard-agent-listen-port "${p[3]}" --dashboard-agent-grpc-port "${p[4]}" \
    --runtime-env-agent-port "${p[5]}" --metrics-export-port "${p[6]}" --temp-dir "$DIR/ray-head" "${common[@]}"
  wait_for 90 head "the head node's dashboard on port $dash_port" dashboard_get "$dash_port" /api/version

  # Nodes one by one: the worker joins once the head is up.
  start_bg worker "$DIR/worker.log" env TMPDIR="$DIR/node-worker/tmp" HF_HOME="$DIR/node-worker/hf" "$RAY_BIN" start --address "127.0.0.1:$ray_port" --num-cpus "$worker_cpus" \
    --resources '{"worker": 1}' --node-manager-port "${p[7]}" --object-manager-port "${p[8]}" \
    --dashboard-agent-listen-port "${p[9]}" --dashboard-agent-grpc-port "${p[10]}" \
    --runtime-env-agent-port "${p[11]}" --metrics-export-port "$(free_port)" --temp-dir "$DIR/ray-worker" \
    "${common[@]}"

  {
    echo "export RAY_ADDRESS=http://127.0.0.1:$dash_port"
    echo "export RD_GCS_ADDRESS=127.0.0.1:$ray_port"
    echo "export RAY_AUTH_MODE=token"
    if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then echo "export RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"; fi
    echo "export RAY_DISTILL_STORAGE=$RAY_DISTILL_STORAGE"
  } > "$DIR/cluster.env"

  if [[ -z "${RD_NO_MLFLOW:-}" ]]; then
    mkdir -p "$DIR/mlartifacts"
    # MLflow's job runner (huey consumer processes for its GenAI jobs; ray-distill runs none) off unless asked
    # for: it cost ~24 CPU-s of a 90 s server life on 2 cores, 31 vs 7 CPU-s in all
    start_bg mlflow "$DIR/mlflow.log" env -u MLFLOW_TRACKING_URI \
      MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
      "$MLFLOW_BIN" server --backend-store-uri "sqlite:///$DIR/mlflow.db" \
      --artifacts-destination "$DIR/mlartifacts" --host 127.0.0.1 --port "$mlflow_port" --workers 1
    echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port" >> "$DIR/cluster.env"
    wait_for 90 mlflow "the mlflow server on port $mlflow_port" \
      "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$mlflow_port/health', timeout=2)"
  fi

  # The worker node has registered when the cluster reports its {"worker": 1} resource.
  wait_for 90 worker "the worker node to join" worker_joined "$dash_port"
  started=1
  echo "local_cluster: up (state in $DIR)"
  cat "$DIR/cluster.env"
}

stop_jobs() {  # stop_jobs PORT: ask the Jobs API to stop every job still running (their drivers live in own sessions)
  "$PY" - "$1" <<'EOF' || true
import sys, time, urllib.request, json
from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
base, headers = f"http://127.0.0.1:{sys.argv[1]}", get_auth_headers_if_auth_enabled({})
def call(path, method="GET"):
    req = urllib.request.Request(base + path, method=method, headers=headers)
    return json.load(urllib.request.urlopen(req, timeout=5))
try:
    running = [j["submission_id"] for j in call("/api/jobs/") if j["status"] in ("PENDING", "RUNNING") and j.get("submission_id")]
except Exception:
    sys.exit(0)
for job in running:
    call(f"/api/jobs/{job}/stop", "POST")
deadline = time.time() + 20
while running and time.time() < deadline:
    time.sleep(1)
    running = [j for j in running if call(f"/api/jobs/{j}")["status"] in ("PENDING", "RUNNING")]
EOF
}

kill_leftovers() {  # processes still running inside this cluster's dirs (job drivers, workers): by pid
  local pid cwd mine=" " p=$$
  while [[ "$p" -gt 1 ]]; do mine+="$p "; p="$(ps -o ppid= -p "$p" | tr -d ' ')"; [[ -n "$p" ]] || break; done
  for pid in $(ps -eo pid=); do
    [[ "$mine" == *" $pid "* ]] && continue  # never this script or the shell that runs it
    cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null || true)"
    if [[ "$cwd" == "$DIR"/* ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
}

cmd_stop() {
  [[ -d "$DIR" ]] || { echo "local_cluster: nothing to stop ($DIR does not exist)"; return 0; }
  if pid_alive head && [[ -f "$DIR/cluster.env" ]]; then
    local PY_ENV
    PY_ENV="$(sed -n 's/^export //p' "$DIR/cluster.env")"
    (set -a; eval "$PY_ENV"; stop_jobs "${RAY_ADDRESS##*:}")
  fi
  stop_groups mlflow worker head
  kill_leftovers
  echo "local_cluster: stopped (state kept in $DIR; remove it with: rm -rf $DIR)"
}

cmd_status() {
  local n
  for n in head worker mlflow; do
    if pid_alive "$n"; then echo "$n: running (pgid $(cat "$DIR/$n.pid"))"; else echo "$n: stopped"; fi
  done
  [[ -f "$DIR/cluster.env" ]] && cat "$DIR/cluster.env"
  return 0
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status   (see the header of this script for settings)" >&2; exit 2 ;;
esac
