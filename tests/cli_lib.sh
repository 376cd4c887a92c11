# cli_lib.sh: what the CLI test scripts share (sourced after setting TMP): the pass / fail counters
# and the checks that update them.
passed=0 failed=0

ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
# check NAME CONDITION-COMMAND...: ok when the command succeeds.
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }
# run_ok NAME CMD...: exits 0 (stderr kept in $TMP/err).
run_ok() {
    local name=$1; shift
    if "$@" >"$TMP/out" 2>"$TMP/err"; then ok "$name"; else bad "$name (exit $?: $(tail -c 400 "$TMP/err"))"; fi
}
# run_fails NAME STATUS PATTERN CMD...: that exit status (not a crash), and stderr matches PATTERN.
run_fails() {
    local name=$1 want=$2 pattern=$3; shift 3
    "$@" >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    if [ $rc -eq "$want" ] && grep -qE -- "$pattern" "$TMP/err"; then ok "$name"
    else bad "$name (exit $rc, stderr: $(head -c 400 "$TMP/err"))"; fi
}
# json_set FILE KEY JSON-VALUE: sets a top-level key of a JSON file (the value "DELETE" removes it).
json_set() {
    perl -MJSON::PP -e 'my ($f, $k, $v) = @ARGV; local $/; open my $h, "<", $f or die "$f: $!"; my $j = JSON::PP->new->decode(<$h>);
        close $h; if ($v eq "DELETE") { delete $j->{$k} } else { $j->{$k} = JSON::PP->new->allow_nonref->decode($v) }
        open $h, ">", $f or die; print $h JSON::PP->new->canonical->pretty->encode($j)' "$@"
}
