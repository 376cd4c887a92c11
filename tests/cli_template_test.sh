#!/usr/bin/env bash
# Chat templates against the reference renderer: tests/jinja_reference.mjs renders every template of
# tests/templates with >= 200 generated message lists through `peft data --render` and through npm's
# @huggingface/jinja (pinned below, installed once into build/npm), byte for byte, and compares the
# rendered texts' token ids under GPT-2's vocabulary (../shared's) with npm's @huggingface/tokenizers.
# Without the packages (no network, no npm) the comparison is SKIPPED loudly; in CI (CI=true) that is
# a failure.
# Usage: PEFT=build/peft bash tests/cli_template_test.sh
set -u
PEFT=${PEFT:-build/peft}
TMP=$(mktemp -d /tmp/peft-cli-template.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
. "$(dirname "$0")/cli_lib.sh"
JINJA_VERSION=0.5.13 TOKENIZERS_VERSION=0.2.0
GPT2=${PEFT_SHARED_FIXTURES:-../shared/fixtures/hf-peft}/tokenizer-gpt2
NPM_DIR=${PEFT_NPM_DIR:-build/npm}
skipped=0

version_of() { node -p "require('./$NPM_DIR/node_modules/$1/package.json').version" 2>/dev/null; }
have_jinja() { [ "$(version_of @huggingface/jinja)" = "$JINJA_VERSION" ] && [ "$(version_of @huggingface/tokenizers)" = "$TOKENIZERS_VERSION" ]; }
if ! have_jinja && command -v npm >/dev/null; then
    mkdir -p "$NPM_DIR"
    [ -f "$NPM_DIR/package.json" ] || echo '{"private": true}' >"$NPM_DIR/package.json"
    (cd "$NPM_DIR" && npm install --no-audit --no-fund --silent "@huggingface/jinja@$JINJA_VERSION" "@huggingface/tokenizers@$TOKENIZERS_VERSION") >"$TMP/npm.log" 2>&1
fi
if have_jinja; then
    vocab=()
    if [ -f "$GPT2/encoder.json" ]; then vocab=("$GPT2")
    else echo "*** SKIPPED: $GPT2 not found: the rendered texts' token ids were not compared with @huggingface/tokenizers ***"; skipped=$((skipped + 1)); fi
    if node tests/jinja_reference.mjs "$PEFT" "$NPM_DIR/node_modules" "${vocab[@]}" >"$TMP/ref.log" 2>&1; then
        ok "templates byte-identical to @huggingface/jinja $JINJA_VERSION: $(tail -1 "$TMP/ref.log")"
        grep -E '^ok |^token ids' "$TMP/ref.log" | sed 's/^/     /'
    else bad "templates against @huggingface/jinja $JINJA_VERSION:"; head -c 6000 "$TMP/ref.log"; fi
elif [ "${CI:-}" = true ]; then
    bad "@huggingface/jinja $JINJA_VERSION could not be installed in CI: $(tail -c 600 "$TMP/npm.log" 2>/dev/null)"
else
    echo "*** SKIPPED: @huggingface/jinja $JINJA_VERSION not installed (npm install failed or no npm): the template comparison did not run ***"
    skipped=$((skipped + 1))
fi

echo "$passed passed, $failed failed, $skipped skipped"
[ $failed -eq 0 ]
