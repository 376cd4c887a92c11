# serve_start.sh: starting `peft serve` on a free port, shared by the CLI tests (tests/cli_http.sh) and the
# serving benchmark (bench/serve/run.sh); sourced, with PEFT set to the binary.
# serve_start OUT ERR TRIES ARGS...: runs "$PEFT" serve ARGS --port 0 in the background (its stdout in OUT, stderr
# in ERR) and sets SERVE_PID; waits up to TRIES x 0.1 s for its "listening on" line and sets PORT to the port it
# names. Returns 1 when the server never listens (it may still be running: stop SERVE_PID).
serve_start() {
    local out=$1 err=$2 tries=$3 i
    shift 3
    "$PEFT" serve "$@" --port 0 >"$out" 2>"$err" &
    SERVE_PID=$!
    PORT=
    for i in $(seq 1 "$tries"); do
        PORT=$(sed -n 's|^listening on http://[0-9.]*:\([0-9]*\)$|\1|p' "$out")
        [ -n "$PORT" ] && return 0
        sleep 0.1
    done
    return 1
}
