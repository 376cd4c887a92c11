#!/usr/bin/env bash
# The method table (src/methods/method.h) is the one place a method is named: each method's name and
# peft_type appear as a string literal once in src/, cli/ and tests/gpu, in its descriptor. Anything
# else asks the table (method_parse, method_name, method_names), so a new method is one file and
# one table row. A literal that is the same word but not our method (a file format's own value)
# carries the comment "layout: not a method" on its line.
# Usage: bash tests/check_layout.sh [ROOT]; ends with "N passed, N failed, N skipped".
set -u
ROOT=${1:-.}
passed=0 failed=0
for word in lora vera adalora full LORA VERA ADALORA; do
    hits=$(cd "$ROOT" && grep -rnF --include='*.c' --include='*.h' --include='*.cu' --include='*.cuh' "\"$word\"" src cli tests/gpu |
           grep -v 'layout: not a method')
    n=$(printf '%s' "$hits" | grep -c .)
    if [ "$n" -eq 1 ] && printf '%s' "$hits" | grep -qE "\.(name|peft_type) = \"$word\""; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL \"$word\": $n string literals in src/ cli/ tests/gpu, want 1 (its descriptor's .name or .peft_type):"
        printf '%s\n' "$hits" | sed 's/^/    /'
    fi
done
# The CLI sees the library through include/peft.h only (its own cli.h aside): a header it needs is
# added to peft.h, which says what is public.
hits=$(cd "$ROOT" && grep -n '^#include "' cli/*.c cli/*.h | grep -vE '#include "(peft|cli)\.h"$')
if [ -z "$hits" ]; then
    passed=$((passed + 1))
else
    failed=$((failed + 1))
    echo "FAIL cli/ includes a library header directly, not through include/peft.h:"
    printf '%s\n' "$hits" | sed 's/^/    /'
fi
echo "$passed passed, $failed failed, 0 skipped"
[ "$failed" -eq 0 ]
