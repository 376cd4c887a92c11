// jinja_reference.mjs: our Jinja interpreter against @huggingface/jinja, byte for byte.
// Each template of tests/templates renders >= 200 generated message lists (system or not,
// multi-turn, empty and whitespace content, unicode, tool calls and tool messages, broken role
// orders, with and without tools and add_generation_prompt) through both; a case passes when the
// texts are identical or both refuse it (an error, e.g. raise_exception).
// With GPT-2's vocabulary (TOKENIZER_DIR: encoder.json + vocab.bpe, ../shared's tokenizer-gpt2), every
// text rendered by both is also tokenized by ours (peft data --model) and by npm's
// @huggingface/tokenizers (from a tokenizer.json made here of the same two files): the ids must be equal.
// Usage: node tests/jinja_reference.mjs PEFT NODE_MODULES_DIR [TOKENIZER_DIR]  (cli_template_test.sh runs it)
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [peft, modules, tokenizerDir] = process.argv.slice(2);
const { Template } = await import(pathToFileURL(join(modules, "@huggingface/jinja/dist/index.js")).href);

// GPT-2's tokenizer.json, as transformers' conversion writes it, for @huggingface/tokenizers.
let hfTokenizer = null;
if (tokenizerDir) {
    const { Tokenizer } = await import(pathToFileURL(join(modules, "@huggingface/tokenizers/dist/tokenizers.mjs")).href);
    const vocab = JSON.parse(readFileSync(join(tokenizerDir, "encoder.json"), "utf8"));
    const merges = readFileSync(join(tokenizerDir, "vocab.bpe"), "utf8").split("\n").filter((l) => l.length && !l.startsWith("#version"));
    const byteLevel = { add_prefix_space: false, trim_offsets: true, use_regex: true };
    hfTokenizer = new Tokenizer({
        version: "1.0",
        added_tokens: [{ id: 50256, content: "<|endoftext|>", single_word: false, lstrip: false, rstrip: false, normalized: true, special: true }],
        normalizer: null, pre_tokenizer: { type: "ByteLevel", ...byteLevel }, post_processor: null, decoder: { type: "ByteLevel", ...byteLevel },
        model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: "", end_of_word_suffix: "", fuse_unk: false,
                 byte_fallback: false, vocab, merges },
    }, {});
}

// A small seeded generator (mulberry32): the same cases every run.
let seed = 20;
function rand() {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = (xs) => xs[Math.floor(rand() * xs.length)];

const TEXTS = [
    "Hi there, how are you?", "héllo wörld", "日本語のテキストです。", "Привет, мир", "😀 emoji 🎉 and more", "naïve café",
    "Ω ≈ ∑ → ∞", "", "   ", "  padded both sides  ", "\nleading newline", "trailing newline\n", "tab\tseparated",
    "quote \" and 'single'", "back\\slash", "{{ not a tag }} {% neither %}", "</s> a fake end", "<|im_end|> inside",
    "The answer is 42.", "What is 2 + 2?", "line one\nline two\n\nline four", "multi   space   text", "a", "?",
    "\u00a0nbsp\u00a0", "mixed English and 中文 text", "RAISE please",
];
const TOOLS = [
    { type: "function", function: { name: "get_weather", description: "Current weather in a city", parameters: {
        type: "object", properties: { city: { type: "string", description: "The city" }, unit: { type: "string", enum: ["c", "f"] } },
        required: ["city"] } } },
    { type: "function", function: { name: "add", description: "Add two numbers", parameters: {
        type: "object", properties: { a: { type: "number" }, b: { type: "number" } }, required: ["a", "b"] } } },
];
const ID = "abcdefghijklmnopqrstuvwxyz0123456789";
function toolCall() {
    const id = Array.from({ length: rand() < 0.9 ? 9 : 5 }, () => pick([...ID])).join("");
    const fn = rand() < 0.5 ? { name: "get_weather", arguments: { city: pick(["Paris", "Zürich", "東京"]), unit: "c" } }
                            : { name: "add", arguments: { a: Math.floor(rand() * 100), b: 2.5 } };
    return { id, type: "function", function: fn };
}
function conversation(i) {
    const msgs = [];
    if (rand() < 0.4) msgs.push({ role: "system", content: pick(TEXTS) });
    const turns = 1 + Math.floor(rand() * 4);
    for (let t = 0; t < turns; t++) {
        msgs.push({ role: "user", content: pick(TEXTS) });
        if (rand() < 0.15) {  // a tool round trip
            const calls = [toolCall()];
            if (rand() < 0.2) calls.push(toolCall());
            msgs.push({ role: "assistant", content: rand() < 0.5 ? "" : null, tool_calls: calls });
            for (const c of calls) msgs.push({ role: "tool", tool_call_id: c.id, name: c.function.name, content: pick(["22 degrees", "{\"sum\": 44.5}", ""]) });
        }
        if (t < turns - 1 || rand() < 0.6) msgs.push({ role: "assistant", content: pick(TEXTS) });
    }
    if (rand() < 0.05) msgs.push({ role: "user", content: "a second user turn in a row" });  // broken alternation
    if (i % 10 == 3) msgs.splice(0, msgs.length, { role: "user", content: pick(TEXTS) });  // single turn
    const ctx = { messages: msgs, bos_token: "<s>", eos_token: "</s>", add_generation_prompt: rand() < 0.5 };
    if (rand() < 0.25) ctx.tools = TOOLS;
    else ctx.tools = null;
    if (rand() < 0.2) ctx.date_string = "01 Jan 2025";
    if (rand() < 0.1) ctx.tools_in_user_message = false;
    return ctx;
}
const N = 240;
const contexts = Array.from({ length: N }, (_, i) => conversation(i));

const dir = mkdtempSync(join(tmpdir(), "peft-jinja-"));
let passed = 0, failed = 0, idsChecked = 0, idsBad = 0;
try {
    const ctxFile = join(dir, "contexts.jsonl");
    writeFileSync(ctxFile, contexts.map((c) => JSON.stringify(c)).join("\n") + "\n");
    for (const name of readdirSync("tests/templates").filter((f) => f.endsWith(".jinja")).sort()) {
        const path = join("tests/templates", name);
        const source = readFileSync(path, "utf8");
        const args = ["data", "--template", path, "--render", ctxFile, ...(tokenizerDir ? ["--model", tokenizerDir] : [])];
        const ours = execFileSync(peft, args, { maxBuffer: 1 << 28 })
            .toString("utf8").split("\n").filter((l) => l.length).map((l) => JSON.parse(l));
        let template = null, parseError = null;
        try { template = new Template(source); } catch (e) { parseError = e; }
        let ok = 0, bad = 0, errors = 0;
        contexts.forEach((ctx, i) => {
            let want = null, err = parseError;
            if (!err) { try { want = template.render(ctx); } catch (e) { err = e; } }
            const got = ours[i];
            const same = err ? got && "error" in got : got && got.text === want;
            if (err) errors++;
            if (same && hfTokenizer && !err) {
                const ids = hfTokenizer.encode(want, { add_special_tokens: false }).ids;
                idsChecked++;
                if (JSON.stringify(ids) !== JSON.stringify(got.ids)) {
                    idsBad++;
                    if (idsBad <= 3) console.log(`FAIL ${name} case ${i}: token ids differ\n  @huggingface/tokenizers: ${JSON.stringify(ids)}\n  peft: ${JSON.stringify(got.ids)}`);
                    bad++;
                    return;
                }
            }
            if (same) { ok++; return; }
            bad++;
            if (bad <= 3) {
                console.log(`FAIL ${name} case ${i}: ${JSON.stringify(ctx)}`);
                console.log(`  @huggingface/jinja: ${err ? "error: " + err.message : JSON.stringify(want)}`);
                console.log(`  peft:               ${got ? JSON.stringify(got.text ?? "error: " + got.error) : "(no line)"}`);
            }
        });
        console.log(`${bad ? "FAIL" : "ok  "} ${name}: ${ok}/${contexts.length} identical (${errors} refused by both)`);
        passed += ok;
        failed += bad;
    }
} finally {
    rmSync(dir, { recursive: true, force: true });
}
if (hfTokenizer) console.log(`token ids of ${idsChecked} rendered texts (GPT-2's vocabulary): ${idsChecked - idsBad} equal to @huggingface/tokenizers'`);
else console.log("token ids not compared: no GPT-2 vocabulary given");
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
