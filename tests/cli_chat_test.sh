#!/usr/bin/env bash
# CLI tests of instruction tuning on a tiny Llama (peft init, byte-level tokenizer with the chat
# templates' special tokens added):
#  - the seeds' experiment as a command: Alpaca-format data, peft train --method lora --r 64
#    --targets all-linear, the loss on the outputs only (peft data --show marks it), --train-on-prompt;
#  - peft serve's /v1/chat/completions with a Llama-3-style and a Mistral-style template of the
#    model's own: an adapter trained on a chat ("hi" -> "hello there") answers with exactly that and
#    stops at the template's end-of-turn token (<|eot_id|>, </s>), where a completion of the same
#    rendered prompt runs on past it (unless it is the eos); the prompt has as many tokens as the
#    template's rendering (no bos added: the template writes its own, with add_bos_token set too);
#  - peft generate --chat gives the same answer;
#  - peft train --pack on the Alpaca data (on the GPU: tests/gpu/test_gpu.c's pack checks).
# Usage: PEFT=build/peft bash tests/cli_chat_test.sh
set -u
PEFT=${PEFT:-build/peft}
TMP=$(mktemp -d /tmp/peft-cli-chat.XXXXXX)
. "$(dirname "$0")/cli_http.sh"  # PIDS, and the exit trap that stops the servers
export OMP_NUM_THREADS=1
. "$(dirname "$0")/cli_lib.sh"
same() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1 (got [$2], want [$3])"; fi; }

# ---- the model: a tiny Llama whose tokenizer knows the templates' special tokens ----
M=$TMP/llama
"$PEFT" init --arch llama --layers 2 --hidden 64 --heads 4 --kv-heads 2 --context 512 --vocab 272 --seed 5 --out "$M" >/dev/null ||
    { bad "peft init"; echo "$passed passed, $failed failed, 0 skipped"; exit 1; }
perl -MJSON::PP -e 'my ($f, @t) = @ARGV; local $/; open my $h, "<", $f or die; my $j = JSON::PP->new->decode(<$h>); close $h; my $id = 257;
    for my $c (@t) { push @{$j->{added_tokens}}, {id => $id++, content => $c, single_word => JSON::PP::false, lstrip => JSON::PP::false,
        rstrip => JSON::PP::false, normalized => JSON::PP::false, special => JSON::PP::true} }
    open $h, ">", $f or die; print $h JSON::PP->new->canonical->pretty->encode($j)' \
    "$M/tokenizer.json" '<|begin_of_text|>' '<|start_header_id|>' '<|end_header_id|>' '<|eot_id|>' '<s>' '</s>'

# ---- the seeds' experiment: Alpaca data, LoRA r 64 on every linear layer ----
echo "# peft train on Alpaca-format data (completion-only loss)"
perl -MJSON::PP -e 'my @r; for my $i (1..40) { push @r, $i % 2 ? {instruction => "Add $i and $i.", input => "", output => ($i + $i) . "."}
    : {instruction => "Repeat the input.", input => "word $i", output => "word $i"} } print JSON::PP->new->canonical->pretty->encode(\@r)' >"$TMP/alpaca.json"
run_ok "peft data --show 0" "$PEFT" data --model "$M" --data "$TMP/alpaca.json" --show 0
check "... Stanford's prompt, the output and eos marked as trained" grep -qF "### Instruction:
Add 1 and 1.

### Response:«2.<|endoftext|>»" "$TMP/out"
run_ok "train lora --r 64 --targets all-linear" "$PEFT" train --model "$M" --data "$TMP/alpaca.json" --method lora --r 64 --alpha 16 \
    --targets all-linear --steps 6 --batch 4 --seq-len 256 --lr 2e-3 --threads 1 --out "$TMP/alpaca-lora"
check "... adapter_config.json: r 64 on q, k, v, o, gate, up and down" perl -MJSON::PP -e 'local $/; my $j = JSON::PP->new->decode(<STDIN>);
    exit !($j->{r} == 64 && join(",", sort @{$j->{target_modules}}) eq "down_proj,gate_proj,k_proj,o_proj,q_proj,up_proj,v_proj")' \
    <"$TMP/alpaca-lora/adapter_config.json"
loss_tokens() { sed -n 's/.*sequences from [0-9]* records (\([0-9]*\) tokens with a loss.*/\1/p' "$TMP/err" | head -1; }
only=$(loss_tokens)
run_ok "train --train-on-prompt" "$PEFT" train --model "$M" --data "$TMP/alpaca.json" --method lora --r 64 --targets all-linear \
    --steps 1 --batch 4 --seq-len 256 --threads 1 --train-on-prompt --out "$TMP/alpaca-all"
all=$(loss_tokens)
check "... the outputs alone carry a loss ($only tokens), every token with --train-on-prompt ($all)" test "${only:-0}" -gt 0 -a "${all:-0}" -gt $((only * 5))

echo "# --pack"
run_ok "train --pack" "$PEFT" train --model "$M" --data "$TMP/alpaca.json" --method lora --r 8 --targets all-linear --steps 2 --batch 2 \
    --seq-len 512 --threads 1 --pack --out "$TMP/alpaca-pack"
check "... 40 examples packed into fewer sequences" grep -qE "packing: 40 examples in [0-9]+ sequences of up to 512 tokens" "$TMP/err"

# ---- chat templates of the model's own ----
LLAMA3='{{ bos_token }}{% for m in messages %}{{ "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content | trim + "<|eot_id|>" }}{% endfor %}{% if add_generation_prompt %}{{ "<|start_header_id|>assistant<|end_header_id|>\n\n" }}{% endif %}'
MISTRAL='{{ bos_token }}{% for m in messages %}{% if (m.role == "user") != (loop.index0 % 2 == 0) %}{{ raise_exception("roles must alternate") }}{% endif %}{% if m.role == "user" %}{{ "[INST] " + m.content + " [/INST]" }}{% else %}{{ " " + m.content + eos_token }}{% endif %}{% endfor %}'
for i in $(seq 1 60); do echo '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}'; done >"$TMP/chat.jsonl"

chat_model() {  # name template bos eos add_bos: a copy of the model with that tokenizer_config.json, and an adapter trained on chat.jsonl
    local d=$TMP/$1
    cp -r "$M" "$d"
    perl -MJSON::PP -e 'print JSON::PP->new->canonical->pretty->encode({chat_template => $ARGV[0], bos_token => $ARGV[1], eos_token => $ARGV[2],
        add_bos_token => $ARGV[3] ? JSON::PP::true : JSON::PP::false})' "$2" "$3" "$4" "$5" >"$d/tokenizer_config.json"
    # Greedy decoding must give the turn back exactly, which hangs on the initial draws at a high learning rate:
    # 1e-2 for 60 steps passed with the old per-module generators' seed 3 but fails with PEFT's draw order for
    # 6 of seeds 3..9; 5e-3 for 120 steps passes with seeds 3 and 4 (not 5).
    run_ok "$1: train on chat data with the template" "$PEFT" train --model "$d" --data "$TMP/chat.jsonl" --method lora --r 8 --alpha 32 \
        --targets all-linear --lr 5e-3 --steps 120 --batch 4 --seq-len 64 --seed 3 --threads 1 --out "$TMP/$1-lora"
}
serve_chat() {  # name end-of-turn bos eos
    local name=$1 eot=$2 d=$TMP/$1
    run_ok "$name: peft data --show 0" "$PEFT" data --model "$d" --data "$TMP/chat.jsonl" --show 0
    check "$name: ... the assistant turn and its $eot trained" grep -qF "«hello there$eot»" "$TMP/out"
    if ! start_server "$name" --model "$d" --adapters "$TMP" --threads 1; then bad "$name: server starts ($(head -c 300 "$TMP/$name.err"))"; return; fi
    local U=http://127.0.0.1:$PORT r
    r=$(post $U/v1/chat/completions "{\"model\": \"$name-lora\", \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 30, \"temperature\": 0}")
    same "$name: /v1/chat/completions answers with the trained turn" "$(echo "$r" | body_of | jget '$j->{choices}[0]{message}{content}')" "hello there"
    same "$name: ... and stops at $eot" "$(echo "$r" | body_of | jget '$j->{choices}[0]{finish_reason}')" "stop"
    # The same prompt as the template renders it (peft data --render, with the model's bos and eos).
    perl -MJSON::PP -e 'print JSON::PP->new->encode({messages => [{role => "user", content => "hi"}], add_generation_prompt => JSON::PP::true,
        bos_token => $ARGV[0], eos_token => $ARGV[1]}), "\n"' "$3" "$4" >"$TMP/$name.ctx"
    perl -MJSON::PP -e 'local $/; print JSON::PP->new->decode(<STDIN>)->{chat_template}' <"$d/tokenizer_config.json" >"$TMP/$name.jinja"
    "$PEFT" data --template "$TMP/$name.jinja" --render "$TMP/$name.ctx" >"$TMP/$name.rendered"
    perl -MJSON::PP -e 'local $/; print JSON::PP->new->decode(<STDIN>)->{text}' <"$TMP/$name.rendered" >"$TMP/$name.prompt"
    local n
    n=$("$PEFT" tokenize --model "$d" - <"$TMP/$name.prompt" | wc -w)
    same "$name: ... its prompt is the template's rendering ($n tokens)" "$(echo "$r" | body_of | jget '$j->{usage}{prompt_tokens}')" "$n"
    r=$(post $U/v1/completions "$(perl -MJSON::PP -e 'local $/; my $p = <STDIN>; print JSON::PP->new->encode({model => $ARGV[0], prompt => $p,
        max_tokens => 30, temperature => 0})' "$name-lora" <"$TMP/$name.prompt")")
    if [ "$eot" = "$4" ]; then  # the end of turn is the eos: completions stop there too
        same "$name: ... a completion of that prompt stops at the eos $eot" "$(echo "$r" | body_of | jget '$j->{choices}[0]{text}')" "hello there"
    else case "$(echo "$r" | body_of | jget '$j->{choices}[0]{text}')" in
        "hello there$eot"?*) ok "$name: ... a completion of that prompt runs on past $eot (not the eos)" ;;
        *) bad "$name: ... a completion of that prompt runs on past $eot (got: $(echo "$r" | body_of | head -c 300))" ;;
        esac
    fi
    same "$name: peft generate --chat says the same" "$("$PEFT" generate --model "$d" --adapter "$TMP/$name-lora" --chat --prompt hi --max-tokens 30 2>/dev/null)" "hello there"
}
echo "# Llama-3-style template"
chat_model llama3 "$LLAMA3" '<|begin_of_text|>' '<|endoftext|>' 1  # the template writes the bos: none is added
serve_chat llama3 '<|eot_id|>' '<|begin_of_text|>' '<|endoftext|>'
echo "# Mistral-style template"
chat_model mistral "$MISTRAL" '<s>' '</s>' 0
serve_chat mistral '</s>' '<s>' '</s>'

echo "$passed passed, $failed failed, 0 skipped"
[ $failed -eq 0 ]
