# cli_http.sh: what the CLI tests of peft serve share (sourced after setting PEFT and TMP): the
# servers' PIDS and an exit trap that stops them and removes TMP, reading JSON and event streams,
# posting requests, starting a server on a free port.
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT

# jget EXPR < json: a field of a JSON document (Perl's core JSON::PP), e.g. jget '$j->{choices}[0]{text}'.
jget() {
    perl -MJSON::PP -e 'binmode STDOUT, ":utf8"; local $/; my $t = <STDIN>; my $j = eval { JSON::PP->new->decode($t) };
        if (!defined $j) { print "NOT-JSON"; exit 0 } my $v = eval $ARGV[0]; print defined $v ? $v : "" ' "$1"
}
# sse_text < stream: the concatenated text of an event stream (completion or chat chunks); "+DONE" when it ended properly.
sse_text() {
    perl -MJSON::PP -e 'binmode STDOUT, ":utf8"; my ($s, $done) = ("", 0);
        while (<STDIN>) { next unless s/^data: //; chomp; if ($_ eq "[DONE]") { $done = 1; next }
            my $j = JSON::PP->new->decode($_); my $c = $j->{choices}[0] or next;
            $s .= defined $c->{text} ? $c->{text} : defined $c->{delta}{content} ? $c->{delta}{content} : "" }
        print $s, $done ? "+DONE" : "" '
}

# post URL BODY [curl args...]: prints the body then a last line with the HTTP status.
post() {
    local url=$1 body=$2; shift 2
    curl -s -m 60 -w '\n%{http_code}' -H 'Content-Type: application/json' "$@" --data-binary "$body" "$url"
}
status_of() { tail -n 1; }
body_of() { sed '$d'; }

. "$(dirname "${BASH_SOURCE[0]}")/../tools/serve_start.sh"
start_server() {  # log-name args...: sets PORT (a bounded wait for "listening on")
    local name=$1 rc=0
    shift
    serve_start "$TMP/$name.out" "$TMP/$name.err" 100 "$@" || rc=1
    PIDS+=("$SERVE_PID")
    return $rc
}
