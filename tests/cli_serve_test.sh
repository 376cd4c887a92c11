#!/usr/bin/env bash
# CLI test of `peft serve` with real HTTP clients (curl) on loopback:
#  - a tiny GPT-2 (peft init) with three adapters trained by peft train (two LoRA, one VeRA), each
#    on its own sentence, served from one folder on a free port (--port 0);
#  - concurrent requests for the three adapters and the base, more than --max-requests, mixed in
#    one batch: each one's greedy text equals `peft generate`'s for that adapter and prompt
#    (completions, chat, streamed and not), with fewer adapters in memory than registered (LRU);
#  - adapters loaded and unloaded while serving;
#  - every bad request (malformed JSON, unknown adapter, absurd parameters, oversized bodies,
#    wrong routes and methods) gets its 4xx JSON error while a concurrent good request completes;
#  - a second server (a larger model, so generations take a while) for the API key, the request
#    timeout (408) and a client that disconnects mid-stream (its request is cancelled).
# Every wait is bounded; the servers are killed at the end.
# Usage: PEFT=build/peft bash tests/cli_serve_test.sh
set -u
PEFT=${PEFT:-build/peft}
TMP=$(mktemp -d /tmp/peft-cli-serve.XXXXXX)
. "$(dirname "$0")/cli_http.sh"  # PIDS, and the exit trap that stops the servers
export OMP_NUM_THREADS=1  # tiny models: one thread is fastest, and shared machines stay usable
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
bad() { failed=$((failed + 1)); echo "FAIL $1"; }
check() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1 (got [$2], want [$3])"; fi; }

if ! command -v curl >/dev/null; then echo "*** SKIPPED: curl not found ***"; echo "0 passed, 0 failed, 1 skipped"; exit 0; fi


# ---- a model and three adapters ----
"$PEFT" init --arch gpt2 --layers 2 --hidden 64 --heads 4 --context 64 --seed 5 --out "$TMP/base" >/dev/null || { bad "peft init"; exit 1; }
mkdir -p "$TMP/adapters"
train() {  # name method r lr sentence
    for i in $(seq 1 200); do echo "$5"; done > "$TMP/$1.txt"
    "$PEFT" train --model "$TMP/base" --data "$TMP/$1.txt" --method "$2" --r "$3" --alpha 32 --targets c_attn,c_proj,c_fc \
        --lr "$4" --steps 60 --batch 4 --seq-len 48 --seed 3 --out "$TMP/adapters/$1" >/dev/null 2>"$TMP/train.err" ||
        bad "train $1 ($(tail -c 300 "$TMP/train.err"))"
    rm -rf "$TMP/adapters/$1/checkpoint" "$TMP/adapters/$1"/*.jsonl "$TMP/adapters/$1"/*.svg
}
train cat lora 8 1e-2 "the cat sat on the mat."
train dog lora 4 1e-2 "the dog ran in the park."
train bird vera 32 5e-2 "the bird sang a song."

# Expected outputs: peft generate (greedy; adapters merged, as it does by default), both prompts
# in one run (--prompts: one escaped output line each).
printf 'the \na \n' > "$TMP/prompts.txt"
gen() {  # adapter-or-base max_tokens: the outputs of both prompts, one escaped line each
    if [ "$1" = base ]; then "$PEFT" generate --model "$TMP/base" --prompts "$TMP/prompts.txt" --max-tokens "$2" 2>/dev/null
    else "$PEFT" generate --model "$TMP/base" --adapter "$TMP/adapters/$1" --prompts "$TMP/prompts.txt" --max-tokens "$2" 2>/dev/null; fi
}
unescape() { perl -pe 'chomp; s/\\(n|r|\\)/$1 eq "n" ? "\n" : $1 eq "r" ? "\r" : "\\"/ge'; }
declare -A WANT
for a in cat dog bird base; do
    gen $a 24 > "$TMP/want.$a"
    WANT[$a]=$(sed -n 1p "$TMP/want.$a" | unescape)
    WANT[$a.2]=$(sed -n 2p "$TMP/want.$a" | unescape)
done
echo "  cat:  the ${WANT[cat]}" | head -1
echo "  dog:  the ${WANT[dog]}" | head -1
echo "  bird: the ${WANT[bird]}" | head -1
echo "  base: the ${WANT[base]}" | head -1
[ "${WANT[cat]}" != "${WANT[dog]}" ] && [ "${WANT[dog]}" != "${WANT[bird]}" ] && [ "${WANT[cat]}" != "${WANT[base]}" ] &&
    ok "the adapters generate different texts" || bad "the adapters generate different texts"

# ---- server 1: 3 adapters, at most 2 in memory, 4 requests at a time, small body limit ----
if start_server s1 --model "$TMP/base" --adapters "$TMP/adapters" --max-requests 4 --max-adapters 2 --max-tokens 64 --max-body 16 --threads 1; then
    ok "server starts on a free loopback port ($PORT)"
else
    bad "server starts (stderr: $(head -c 500 "$TMP/s1.err"))"; echo "$passed passed, $failed failed, 0 skipped"; exit 1
fi
U=http://127.0.0.1:$PORT
check "GET /health" "$(curl -s -m 10 $U/health | jget '$j->{status}')" ok
check "GET /v1/models lists base and the adapters" "$(curl -s -m 10 $U/v1/models | jget 'join ",", sort map { $_->{id} } @{$j->{data}}')" "base,bird,cat,dog"

# ---- concurrent mixed requests ----
# 12 requests (3 adapters + base, 2 prompts, completions and chat, streamed or not) at once on 4
# slots: they queue, join the running batch as others leave, and mix adapters in every step.
n=0
for a in cat dog bird base; do
    for kind in plain stream chat; do
        n=$((n + 1))
        case $kind in
        plain) post $U/v1/completions "{\"model\": \"$a\", \"prompt\": \"the \", \"max_tokens\": 24, \"temperature\": 0}" > "$TMP/r$n" & ;;
        stream) post $U/v1/completions "{\"model\": \"$a\", \"prompt\": \"a \", \"max_tokens\": 24, \"temperature\": 0, \"stream\": true}" -N > "$TMP/r$n" & ;;
        chat) post $U/v1/chat/completions "{\"model\": \"$a\", \"messages\": [{\"role\": \"user\", \"content\": \"the \"}], \"max_tokens\": 24, \"temperature\": 0}" > "$TMP/r$n" & ;;
        esac
        echo "$a $kind" > "$TMP/r$n.what"
    done
done
wait $(jobs -p | grep -v -x -F "$(printf '%s\n' "${PIDS[@]}")") 2>/dev/null
all_ok=1
for i in $(seq 1 $n); do
    read -r a kind < "$TMP/r$i.what"
    st=$(status_of < "$TMP/r$i")
    case $kind in
    plain) got=$(body_of < "$TMP/r$i" | jget '$j->{choices}[0]{text}'); want=${WANT[$a]} ;;
    stream) got=$(body_of < "$TMP/r$i" | sse_text); want="${WANT[$a.2]}+DONE" ;;
    chat) got=$(body_of < "$TMP/r$i" | jget '$j->{choices}[0]{message}{content}'); want=${WANT[$a]} ;;
    esac
    got=$(printf '%s' "$got" | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}')  # as $(...) strips trailing newlines
    [ "$kind" = stream ] && got=$(printf '%s' "$got" | perl -0pe 's/\n+\+DONE$/+DONE/')
    [ "$kind" = stream ] && want=$(printf '%s' "$want" | perl -0pe 's/\n+\+DONE$/+DONE/')
    if [ "$st" != 200 ] || [ "$got" != "$want" ]; then
        all_ok=0; echo "  $a $kind: status $st, got [$got], want [$want]"
    fi
done
[ $all_ok = 1 ] && ok "12 concurrent mixed-adapter requests equal peft generate (completions, streamed, chat)" ||
    bad "concurrent mixed-adapter requests equal peft generate"
h=$(curl -s -m 10 $U/health)
ev=$(printf '%s' "$h" | jget '$j->{adapter_evictions}')
[ "${ev:-0}" -gt 0 ] && ok "3 adapters served with --max-adapters 2 (LRU evictions: $ev)" || bad "LRU eviction ($h)"
steps=$(printf '%s' "$h" | jget '$j->{steps}'); toks=$(printf '%s' "$h" | jget '$j->{tokens}')
echo "  $steps forward steps for $toks tokens"

# The prefix cache: a request whose prompt starts as the previous one's (same adapter) computes only
# the rest; its text is still peft generate's.
p0=$(curl -s -m 10 $U/health | jget '$j->{prefix_hits}')
post $U/v1/completions '{"model": "cat", "prompt": "the cat sat on the mat. the cat", "max_tokens": 8, "temperature": 0}' >/dev/null
r=$(post $U/v1/completions '{"model": "cat", "prompt": "the cat sat on the mat. the dog", "max_tokens": 8, "temperature": 0}' | body_of | jget '$j->{choices}[0]{text}')
p1=$(curl -s -m 10 $U/health | jget '$j->{prefix_hits}')
want=$("$PEFT" generate --model "$TMP/base" --adapter "$TMP/adapters/cat" --prompt "the cat sat on the mat. the dog" --max-tokens 8 2>/dev/null)
check "a prompt that starts as a cached one: one prefix hit, peft generate's text" "$((p1 - p0)) [$r]" "1 [$want]"

# usage and finish_reason
r=$(post $U/v1/completions '{"model": "cat", "prompt": "the ", "max_tokens": 5, "temperature": 0}' | body_of)
check "usage counts tokens" "$(printf '%s' "$r" | jget '"$j->{usage}{prompt_tokens} $j->{usage}{completion_tokens} $j->{choices}[0]{finish_reason}"')" "4 5 length"
r=$(post $U/v1/completions '{"model": "cat", "prompt": "the ", "max_tokens": 24, "temperature": 0, "stop": "mat"}' | body_of)
check "a stop string ends the text before it" "$(printf '%s' "$r" | jget '"$j->{choices}[0]{text}|$j->{choices}[0]{finish_reason}"')" \
    "$(printf '%s' "${WANT[cat]}" | perl -0pe 's/mat.*//s')|stop"

# ---- adapters loaded and unloaded while serving ----
r=$(post $U/v1/adapters "{\"name\": \"cat2\", \"path\": \"$TMP/adapters/cat\"}")
check "POST /v1/adapters loads an adapter" "$(status_of <<<"$r") $(body_of <<<"$r" | jget '$j->{id}')" "201 cat2"
r=$(post $U/v1/completions '{"model": "cat2", "prompt": "the ", "max_tokens": 24, "temperature": 0}')
check "the new adapter serves" "$(status_of <<<"$r") $(body_of <<<"$r" | jget '$j->{choices}[0]{text}')" "200 ${WANT[cat]}"
check "a duplicate name: 409" "$(post $U/v1/adapters "{\"name\": \"cat2\", \"path\": \"$TMP/adapters/cat\"}" | status_of)" 409
check "a folder that is no adapter: 400" "$(post $U/v1/adapters "{\"name\": \"x\", \"path\": \"$TMP/base\"}" | status_of)" 400
check "DELETE /v1/adapters/cat2" "$(curl -s -m 10 -w '\n%{http_code}' -X DELETE $U/v1/adapters/cat2 | status_of)" 200
check "a deleted adapter: 404" "$(post $U/v1/completions '{"model": "cat2", "prompt": "the "}' | status_of)" 404
check "DELETE an unknown adapter: 404" "$(curl -s -m 10 -w '\n%{http_code}' -X DELETE $U/v1/adapters/nope | status_of)" 404

# ---- bad requests, each with its error, while good requests run ----
post $U/v1/completions '{"model": "dog", "prompt": "the ", "max_tokens": 24, "temperature": 0}' > "$TMP/good1" &
G1=$!
post $U/v1/completions '{"model": "bird", "prompt": "a ", "max_tokens": 24, "temperature": 0, "stream": true}' -N > "$TMP/good2" &
G2=$!
head -c 40000 /dev/zero | tr '\0' 'a' > "$TMP/big.txt"
printf '{"model": "cat", "prompt": "%s"}' "$(cat "$TMP/big.txt")" > "$TMP/big.json"
expect_error() {  # name status method url body [curl args]
    local name=$1 want=$2 method=$3 url=$4 body=$5; shift 5
    local r
    if [ "$method" = POST ]; then r=$(post "$U$url" "$body" "$@")
    else r=$(curl -s -m 30 -w '\n%{http_code}' -X "$method" "$@" "$U$url"); fi
    local st msg
    st=$(status_of <<<"$r")
    msg=$(body_of <<<"$r" | jget '$j->{error}{message}')
    if [ "$st" = "$want" ] && [ -n "$msg" ] && [ "$msg" != NOT-JSON ]; then ok "$name: $st ($msg)"
    else bad "$name: got $st [$(body_of <<<"$r" | head -c 200)], want $want with a JSON error"; fi
}
expect_error "malformed JSON" 400 POST /v1/completions '{"model": "cat", "prompt": "the "'
expect_error "not an object" 400 POST /v1/completions '[1, 2]'
expect_error "unknown adapter" 404 POST /v1/completions '{"model": "nope", "prompt": "the "}'
expect_error "missing prompt" 400 POST /v1/completions '{"model": "cat"}'
expect_error "prompt of the wrong type" 400 POST /v1/completions '{"model": "cat", "prompt": {"a": 1}}'
expect_error "negative max_tokens" 400 POST /v1/completions '{"model": "cat", "prompt": "the ", "max_tokens": -5}'
expect_error "max_tokens over the limit" 400 POST /v1/completions '{"model": "cat", "prompt": "the ", "max_tokens": 1000000000}'
expect_error "fractional max_tokens" 400 POST /v1/completions '{"model": "cat", "prompt": "the ", "max_tokens": 2.5}'
expect_error "negative temperature" 400 POST /v1/completions '{"model": "cat", "prompt": "the ", "temperature": -1}'
expect_error "top_p of 0" 400 POST /v1/completions '{"model": "cat", "prompt": "the ", "top_p": 0}'
expect_error "temperature as a string" 400 POST /v1/completions '{"model": "cat", "prompt": "the ", "temperature": "hot"}'
expect_error "n > 1" 400 POST /v1/completions '{"model": "cat", "prompt": "the ", "n": 5}'
expect_error "too many stop strings" 400 POST /v1/completions '{"model": "cat", "prompt": "the ", "stop": ["a","b","c","d","e"]}'
expect_error "token ids outside the vocabulary" 400 POST /v1/completions '{"model": "cat", "prompt": [1, 2, 99999]}'
expect_error "a prompt longer than the context" 400 POST /v1/completions "{\"model\": \"cat\", \"prompt\": \"$(head -c 100 "$TMP/big.txt")\"}"
expect_error "chat without messages" 400 POST /v1/chat/completions '{"model": "cat", "messages": []}'
expect_error "chat with a bad role" 400 POST /v1/chat/completions '{"model": "cat", "messages": [{"role": "wizard", "content": "hi"}]}'
expect_error "oversized body (Content-Length)" 413 POST /v1/completions "@$TMP/big.json"
expect_error "oversized body (chunked)" 413 POST /v1/completions "@$TMP/big.json" -H 'Transfer-Encoding: chunked'
expect_error "unknown route" 404 GET /v1/nothing ''
expect_error "wrong method" 405 GET /v1/completions ''
expect_error "adapter with a bad name" 400 POST /v1/adapters '{"name": "../x", "path": "/tmp"}'
# A client that disconnects mid-stream (this model is quick, so it may also just finish): the server
# stays up and the others' requests are untouched.
curl -s -N -m 0.05 -H 'Content-Type: application/json' -d '{"model": "cat", "prompt": "the ", "max_tokens": 60, "stream": true, "temperature": 0}' $U/v1/completions >/dev/null 2>&1
wait $G1 $G2
check "a good request during the bad ones completes" "$(status_of < "$TMP/good1") $(body_of < "$TMP/good1" | jget '$j->{choices}[0]{text}')" "200 ${WANT[dog]}"
got=$(body_of < "$TMP/good2" | sse_text | perl -0pe 's/\n+\+DONE$/+DONE/')
check "a good streamed request during the bad ones completes" "$got" "$(printf '%s+DONE' "${WANT[bird.2]}" | perl -0pe 's/\n+\+DONE$/+DONE/')"
check "the server is still healthy" "$(curl -s -m 10 $U/health | jget '"$j->{status} $j->{active}"')" "ok 0"

# ---- NUL bytes are text: prompts keep them (serve, generate, tokenize), and so do outputs ----
printf 'ab\0cd\n' > "$TMP/nul-prompt.txt"
want=$("$PEFT" generate --model "$TMP/base" --adapter "$TMP/adapters/cat" --prompts "$TMP/nul-prompt.txt" --max-tokens 12 2>/dev/null | unescape)
r=$(post $U/v1/completions '{"model": "cat", "prompt": "ab\u0000cd", "max_tokens": 12, "temperature": 0}' | body_of)
check "a prompt with a NUL: every byte a token" "$(printf '%s' "$r" | jget '$j->{usage}{prompt_tokens}')" 5
r2=$(post $U/v1/completions '{"model": "cat", "prompt": [97, 98, 0, 99, 100], "max_tokens": 12, "temperature": 0}' | body_of)
check "... the same text as its token ids, and as peft generate --prompts" \
    "$(printf '%s' "$r" | jget '$j->{choices}[0]{text}')|$(printf '%s' "$r2" | jget '$j->{choices}[0]{text}')" "$want|$want"
check "peft tokenize - (stdin) keeps a NUL" "$(printf 'ab\0cd' | "$PEFT" tokenize --model "$TMP/base" -)" "97 98 0 99 100"
check "peft tokenize --decode writes a NUL" "$("$PEFT" tokenize --model "$TMP/base" --decode "97 0 98" | perl -0777 -ne 'print unpack "H*", $_')" 6100620a
expect_error "a NUL in a model name" 400 POST /v1/completions '{"model": "cat\u0000x", "prompt": "the "}'
expect_error "a NUL in a chat message" 400 POST /v1/chat/completions '{"model": "cat", "messages": [{"role": "user", "content": "a\u0000b"}]}'
expect_error "a NUL in a key" 400 POST /v1/completions '{"model": "cat", "prompt\u0000": "the "}'
# A model that always says token 0, the NUL byte (its final norm outputs e_0; token 0's embedding is
# 100 there): every NUL reaches the client, streamed or not, and peft generate's output.
cp -r "$TMP/base" "$TMP/nul"
perl -MJSON::PP -e 'open my $f, "+<:raw", $ARGV[0] or die; read $f, my $n8, 8; my $hl = unpack "Q<", $n8; read $f, my $h, $hl;
    my $j = decode_json($h); my $d = $j->{"transformer.ln_f.weight"}{shape}[0];
    sub put { my ($name, @v) = @_; seek $f, 8 + $hl + $j->{$name}{data_offsets}[0], 0; print $f pack "f<*", @v }
    put("transformer.ln_f.weight", (0) x $d); put("transformer.ln_f.bias", 1, (0) x ($d - 1)); put("transformer.wte.weight", 100)' \
    "$TMP/nul/model.safetensors"
nuls() { perl -0777 -ne 's/\+DONE\n?$// or print "(no [DONE]) "; print length($_), ":", tr/\0//'; }
check "peft generate writes generated NULs" "$("$PEFT" generate --model "$TMP/nul" --prompt a --max-tokens 6 2>/dev/null | perl -0777 -ne 'print length($_), ":", tr/\0//')" "7:6"
if start_server sn --model "$TMP/nul" --threads 1; then
    UN=http://127.0.0.1:$PORT
    r=$(post $UN/v1/completions '{"prompt": "a", "max_tokens": 6, "temperature": 0}' | body_of)
    check "generated NULs in the text (bytes:NULs tokens)" "$(printf '%s' "$r" | jget 'length($j->{choices}[0]{text}) . ":" . ($j->{choices}[0]{text} =~ tr/\0//) . " " . $j->{usage}{completion_tokens}')" "6:6 6"
    r=$(post $UN/v1/chat/completions '{"messages": [{"role": "user", "content": "a"}], "max_tokens": 6, "temperature": 0}' | body_of)
    check "... in a chat message's content" "$(printf '%s' "$r" | jget '($j->{choices}[0]{message}{content} =~ tr/\0//)')" 6
    check "... streamed" "$(post $UN/v1/completions '{"prompt": "a", "max_tokens": 6, "temperature": 0, "stream": true}' -N | body_of | sse_text | nuls)" "6:6"
else bad "NUL model server starts ($(head -c 300 "$TMP/sn.err"))"; fi

# ---- slowloris: 500 connections from one address (127.0.0.2) that send a request line and then
# trickle header lines, never ending them; /health and a greedy completion from another address
# (127.0.0.1) must still answer within 2 s. With the defaults the per-address limit turns most of
# them away; without it (--max-connections-per-ip 0) all 500 stay open and cost no thread each;
# --idle-timeout closes connections that go quiet. ----
slowloris() {  # label slow-interval-ms server-args...: sets SL (the attacker's last status line)
    local label=$1 every=$2; shift 2
    SL=
    if ! start_server sl --model "$TMP/base" --threads 1 --quiet "$@"; then bad "$label: server starts ($(head -c 300 "$TMP/sl.err"))"; return; fi
    local server=${PIDS[-1]}
    node "$(dirname "$0")/slowloris.js" "$PORT" 500 127.0.0.2 "$every" > "$TMP/sl.out" 2>&1 &
    local attacker=$!
    PIDS+=($attacker)
    sleep 2.5  # every connection tried, the accepted ones trickling
    local U=http://127.0.0.1:$PORT t h c
    h=$(curl -s -m 2 -w ' %{http_code} %{time_total}' $U/health)
    c=$(curl -s -m 2 -o /dev/null -w '%{http_code} %{time_total}' -d '{"prompt": "the ", "max_tokens": 8, "temperature": 0}' $U/v1/completions)
    SL=$(tail -n 1 "$TMP/sl.out")
    if [ "$(jget '$j->{status}' <<<"${h% * *}")" = ok ] && [ "${c% *}" = 200 ]; then
        ok "$label: /health and a greedy completion answer (${h##* } s, ${c#* } s; attacker: $SL)"
    else bad "$label: /health [$h], completion [$c] within 2 s (attacker: $SL)"; fi
    kill "$attacker" "$server" 2>/dev/null
    wait "$attacker" "$server" 2>/dev/null
}
if command -v node >/dev/null; then
    slowloris "slowloris, default limits" 1000
    slowloris "slowloris, no per-address limit" 1000 --max-connections-per-ip 0
    slowloris "slowloris, --idle-timeout 1" 3000 --max-connections-per-ip 0 --idle-timeout 1
    [ "${SL#*open }" = 0 ] && ok "... every connection silent for 1 s was closed ($SL)" || bad "connections silent for 1 s still open ($SL)"
else
    echo "*** SKIPPED: node not found: the slowloris test did not run ***"
fi

# ---- server 2: a larger model (generations take seconds): API key, timeout, disconnect ----
"$PEFT" init --arch gpt2 --layers 8 --hidden 512 --heads 8 --context 1024 --seed 2 --out "$TMP/big" >/dev/null
if start_server s2 --model "$TMP/big" --max-requests 4 --max-tokens 1000 --timeout 1 --api-key sekret --threads 1; then
    ok "second server starts ($PORT)"
    S2=${PIDS[-1]}
    tr '\0' ' ' < "/proc/$S2/cmdline" > "$TMP/s2.cmdline"
    U=http://127.0.0.1:$PORT
    K=(-H 'Authorization: Bearer sekret')
    expect_error "no API key" 401 POST /v1/completions '{"prompt": "hi", "max_tokens": 2}'
    expect_error "a wrong API key" 401 POST /v1/completions '{"prompt": "hi", "max_tokens": 2}' -H 'Authorization: Bearer guess'
    check "the API key admits" "$(post $U/v1/completions '{"prompt": "hi", "max_tokens": 2}' "${K[@]}" | status_of)" 200
    check "/health needs no key" "$(curl -s -m 10 $U/health | jget '$j->{status}')" ok
    expect_error "an API key but no admin key: no adapter management" 403 POST /v1/adapters "{\"name\": \"cat\", \"path\": \"$TMP/adapters/cat\"}" "${K[@]}"
    # 1000 tokens of a 25M-parameter model (100 MB read per token) take well over the 1 s timeout: 408.
    expect_error "request timeout" 408 POST /v1/completions '{"prompt": "hi", "max_tokens": 1000, "ignore_eos": true}' "${K[@]}"
    # A client that goes away after 0.3 s, streaming or waiting for the whole text: its request is
    # cancelled (not timed out).
    gone_client() {  # label stream
        local before after c0 t0 c1 t1 a1
        before=$(curl -s -m 10 $U/health | jget '"$j->{cancelled} $j->{timed_out}"')
        curl -s -N -m 0.3 -H 'Content-Type: application/json' "${K[@]}" -d "{\"prompt\": \"hi\", \"max_tokens\": 1000, \"stream\": $2, \"ignore_eos\": true}" \
            $U/v1/completions > "$TMP/cut" 2>/dev/null
        for i in $(seq 1 20); do
            after=$(curl -s -m 10 $U/health | jget '"$j->{cancelled} $j->{timed_out} $j->{active}"')
            [ "${after% *}" != "$before" ] && [ "${after##* }" = 0 ] && break
            sleep 0.05
        done
        read -r c0 t0 <<<"$before"; read -r c1 t1 a1 <<<"$after"
        if [ "$c1" = $((c0 + 1)) ] && [ "$t1" = "$t0" ] && [ "$a1" = 0 ]; then ok "$1 cancels its request ($(grep -c '^data: {' "$TMP/cut") chunks)"
        else bad "$1 cancels its request (before $before, after $after)"; fi
    }
    gone_client "a client gone mid-stream" true
    gone_client "a client gone while waiting for the whole text" false
    check "after it, requests still complete" "$(post $U/v1/completions '{"prompt": "hi", "max_tokens": 3}' "${K[@]}" | status_of)" 200
    # Stopping while requests run: each is answered (503; a stream its error event and [DONE]).
    long='"prompt": "hi", "max_tokens": 1000, "ignore_eos": true'
    post $U/v1/completions "{$long, \"stream\": true}" "${K[@]}" -N > "$TMP/stop.stream" &
    post $U/v1/completions "{$long}" "${K[@]}" > "$TMP/stop.plain" &
    sleep 0.3
    kill "$S2"
    wait "$S2" 2>/dev/null
    wait $(jobs -p | grep -v -x -F "$(printf '%s\n' "${PIDS[@]}")") 2>/dev/null
    grep -q 'shutting down' "$TMP/stop.stream" && grep -q '^data: \[DONE\]' "$TMP/stop.stream" && [ "$(status_of < "$TMP/stop.plain")" = 503 ] &&
        grep -q "stopped in" "$TMP/s2.err" && ok "stopped with requests running: each answered 503, the server ended" ||
        bad "stopped with requests running ($(tail -c 200 "$TMP/stop.stream") | $(tail -c 200 "$TMP/stop.plain") | $(tail -n 2 "$TMP/s2.err"))"
else
    bad "second server starts ($(head -c 300 "$TMP/s2.err"))"
fi
# ---- servers 3-5: keys and adapter paths (docs/serve.md, Security) ----
# Keys from the environment; adapter management needs the admin key (the API key gets 403); POST
# /v1/adapters stays inside --adapters (resolved: no "..", no symlink out), and what it refuses
# says nothing of what exists outside.
mkdir -p "$TMP/root3" "$TMP/outside"
cp -r "$TMP/adapters/cat" "$TMP/root3/cat"
cp -r "$TMP/adapters/dog" "$TMP/outside/dog"
if PEFT_API_KEY=user-key PEFT_ADMIN_KEY=admin-key start_server s3 --model "$TMP/base" --adapters "$TMP/root3" --threads 1; then
    ok "third server starts ($PORT)"
    U=http://127.0.0.1:$PORT
    KU=(-H 'Authorization: Bearer user-key')
    KA=(-H 'Authorization: Bearer admin-key')
    ln -s "$TMP/outside/dog" "$TMP/root3/link"
    check "the API key admits to inference" "$(post $U/v1/completions '{"model": "cat", "prompt": "the ", "max_tokens": 2}' "${KU[@]}" | status_of)" 200
    check "so does the admin key" "$(post $U/v1/completions '{"model": "cat", "prompt": "the ", "max_tokens": 2}' "${KA[@]}" | status_of)" 200
    expect_error "POST /v1/adapters with the API key" 403 POST /v1/adapters "{\"name\": \"c2\", \"path\": \"$TMP/root3/cat\"}" "${KU[@]}"
    expect_error "POST /v1/adapters without a key" 401 POST /v1/adapters "{\"name\": \"c2\", \"path\": \"$TMP/root3/cat\"}"
    expect_error "DELETE /v1/adapters with the API key" 403 DELETE /v1/adapters/cat '' "${KU[@]}"
    check "POST /v1/adapters with the admin key" "$(post $U/v1/adapters "{\"name\": \"c2\", \"path\": \"$TMP/root3/cat\"}" "${KA[@]}" | status_of)" 201
    : > "$TMP/refused.txt"
    for p in "$TMP/outside/dog" "$TMP/outside/nothing" "$TMP/root3/../outside/dog" "$TMP/root3/link" /etc "$TMP/root3/nothing" "$TMP/root3" relative; do
        r=$(post $U/v1/adapters "{\"name\": \"x\", \"path\": \"$p\"}" "${KA[@]}")
        echo "$(status_of <<<"$r") $(body_of <<<"$r" | jget '$j->{error}{message}')" >> "$TMP/refused.txt"
    done
    first=$(head -1 "$TMP/refused.txt")
    if [ "$(sort -u "$TMP/refused.txt" | wc -l)" = 1 ] && [ "${first%% *}" = 400 ] && ! grep -q "$TMP" "$TMP/refused.txt"; then
        ok "paths outside --adapters (existing or not, .., a symlink out): one 400 for all ($first)"
    else bad "paths outside --adapters get one answer ($(tr '\n' '|' < "$TMP/refused.txt"))"; fi
    check "a name alone stays inside too (a symlink out)" "$(post $U/v1/adapters '{"name": "link"}' "${KA[@]}" | status_of)" 400
    check "DELETE /v1/adapters with the admin key" "$(curl -s -m 10 -w '\n%{http_code}' -X DELETE "${KA[@]}" $U/v1/adapters/c2 | status_of)" 200
    models=$(curl -s -m 10 "${KU[@]}" $U/v1/models)
    case "$models" in *"$TMP"*|*'"path"'*) bad "/v1/models shows no server paths ($models)" ;; *) ok "/v1/models shows no server paths" ;; esac
else
    bad "third server starts ($(head -c 300 "$TMP/s3.err"))"
fi
# --allow-any-adapter-path: the operator's opt-out.
if start_server s4 --model "$TMP/base" --allow-any-adapter-path --threads 1; then
    r=$(post http://127.0.0.1:$PORT/v1/adapters "{\"name\": \"dog\", \"path\": \"$TMP/outside/dog\"}")
    check "--allow-any-adapter-path: a folder anywhere" "$(status_of <<<"$r") $(body_of <<<"$r" | jget '$j->{id}')" "201 dog"
else bad "fourth server starts ($(head -c 300 "$TMP/s4.err"))"; fi
# No keys on an address other machines can reach: inference is open, adapter management is not.
if start_server s5 --model "$TMP/base" --adapters "$TMP/root3" --host 0.0.0.0 --threads 1; then
    U=http://127.0.0.1:$PORT
    check "no keys, not loopback: inference open" "$(post $U/v1/completions '{"prompt": "the ", "max_tokens": 2}' | status_of)" 200
    expect_error "no keys, not loopback: adapter management refused" 403 POST /v1/adapters "{\"name\": \"c2\", \"path\": \"$TMP/root3/cat\"}"
    grep -q "warning.*0\.0\.0\.0.*PEFT_API_KEY" "$TMP/s5.err" && ok "a warning for no key on a reachable address" || bad "no warning for no key on 0.0.0.0 ($(head -c 300 "$TMP/s5.err"))"
else bad "fifth server starts ($(head -c 300 "$TMP/s5.err"))"; fi
# --quantize: the base quantized nf4, each request as peft generate --quantize nf4 computes it.
if start_server s6 --model "$TMP/base" --adapters "$TMP/adapters" --quantize nf4 --threads 1 --quiet; then
    want=$("$PEFT" generate --model "$TMP/base" --adapter "$TMP/adapters/cat" --quantize nf4 --prompt "the " --max-tokens 12 --threads 1 2>/dev/null)
    got=$(post http://127.0.0.1:$PORT/v1/completions '{"model": "cat", "prompt": "the ", "max_tokens": 12, "temperature": 0}' | body_of | jget '$j->{choices}[0]{text}')
    check "--quantize nf4: a request generates as peft generate --quantize nf4" "$got" "$want"
else bad "sixth server (--quantize nf4) starts ($(head -c 300 "$TMP/s6.err"))"; fi
# A key on the command line: a warning, and blanked in the process's arguments (ps).
grep -q "warning.*--api-key.*PEFT_API_KEY" "$TMP/s2.err" && ok "--api-key on the command line: a warning" || bad "--api-key warning ($(head -c 300 "$TMP/s2.err"))"
if [ -n "${S2:-}" ]; then
    grep -q sekret "$TMP/s2.cmdline" && bad "the API key is visible in ps" || ok "the API key is blanked in ps"
fi

expect_usage=$("$PEFT" serve --model "$TMP/base" --device tpu 2>&1 >/dev/null; echo "rc=$?")
case "$expect_usage" in *"cpu or cuda"*"rc=2") ok "--device tpu: a clear error" ;; *) bad "--device tpu ($expect_usage)" ;; esac
expect_usage=$(PEFT_API_KEY=same PEFT_ADMIN_KEY=same "$PEFT" serve --model "$TMP/base" 2>&1 >/dev/null; echo "rc=$?")
case "$expect_usage" in *"must differ"*"rc=2") ok "one key for both roles: refused" ;; *) bad "one key for both roles ($expect_usage)" ;; esac

# ---- an adapter whose config asks for absurd sizes (r, init_r 1e9): its request fails, the server stays ----
U=http://127.0.0.1:$(sed -n 's|^listening on http://127\.0\.0\.1:\([0-9]*\)$|\1|p' "$TMP/s1.out")
"$PEFT" train --model "$TMP/base" --data "$TMP/cat.txt" --method adalora --init-r 4 --target-r 2 --targets c_attn \
    --steps 2 --batch 2 --seq-len 32 --out "$TMP/ada" >/dev/null 2>"$TMP/train.err" || bad "train ada ($(tail -c 300 "$TMP/train.err"))"
for a in adapters/cat:r ada:init_r; do
    src=$TMP/${a%%:*} name=huge-${a#*:}
    rm -rf "$TMP/adapters/$name"; mkdir "$TMP/adapters/$name"
    cp "$src/adapter_config.json" "$src/adapter_model.safetensors" "$TMP/adapters/$name/"
    # (AdaLoRA's rank_pattern, init_r entries per module, would be refused first: it goes.)
    KEY=${a#*:} perl -MJSON::PP -i -0pe 'my $j = JSON::PP->new->decode($_); $j->{$ENV{KEY}} = 1000000000; delete $j->{rank_pattern};
        $_ = JSON::PP->new->encode($j)' "$TMP/adapters/$name/adapter_config.json"
    r=$(post $U/v1/adapters "{\"name\": \"$name\", \"path\": \"$TMP/adapters/$name\"}")
    msg=$(body_of <<<"$r" | jget '$j->{error}{message}')
    case "$(status_of <<<"$r") $msg" in
    4??" "*1000000000*) ok "an adapter with ${a#*:} 1e9 is refused ($(status_of <<<"$r"): ${msg:0:120})" ;;
    *) bad "an adapter with ${a#*:} 1e9 is refused (got $(status_of <<<"$r") [$msg])" ;;
    esac
done
check "after them the server answers /health" "$(curl -s -m 10 $U/health | jget '$j->{status}')" ok
r=$(post $U/v1/completions '{"model": "cat", "prompt": "the ", "max_tokens": 24, "temperature": 0}')
check "after them a completion is served" "$(status_of <<<"$r") $(body_of <<<"$r" | jget '$j->{choices}[0]{text}')" "200 ${WANT[cat]}"

for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
grep -q "stopping" "$TMP/s1.err" && ok "the server stops on SIGTERM" || bad "the server stops on SIGTERM"
PIDS=()
echo "$passed passed, $failed failed, 0 skipped"
[ $failed -eq 0 ]
