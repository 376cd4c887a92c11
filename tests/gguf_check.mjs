// gguf_check.mjs: llama.cpp (through node-llama-cpp) and @huggingface/gguf on the GGUF files
// `peft export` writes, for tests/cli_gguf_test.sh. NODE_MODULES names the folder the two npm
// packages are installed in. Modes (prompts and texts on stdin, one a line):
//   generate MODEL LORA|- N   prompts as token ids (space separated): greedy continuation of at most N
//                             tokens, printed as `peft generate --ids` does ("eos" last when it
//                             stopped at an end-of-generation token)
//   tokenize MODEL            texts (\n, \t, \\ escapes): their token ids (special tokens parsed, no bos)
//   probs MODEL_A MODEL_B     prompts as token ids: the most likely next token under each, and the
//                             largest change of a next-token probability between them (softmax, T=1)
//   meta FILE                 every metadata entry "key<TAB>value" (arrays as [length]) and every
//                             tensor "tensor<TAB>name<TAB>ggml type<TAB>shape", as @huggingface/gguf reads them
//   version                   the llama.cpp release node-llama-cpp's binaries were built from
import {readFileSync} from "node:fs";

const NM = process.env.NODE_MODULES;
const [mode, ...args] = process.argv.slice(2);
const lines = () => readFileSync(0, "utf8").split("\n").filter((l) => l.length > 0);
const ids = (line) => line.trim().split(/\s+/).map(Number);
const unescape = (s) => s.replace(/\\(.)/g, (_, c) => ({n: "\n", t: "\t", r: "\r"})[c] ?? c);

async function llama() {
    const {getLlama, LlamaLogLevel} = await import(NM + "/node-llama-cpp/dist/index.js");
    // The prebuilt CPU binaries only; never a build or a download.
    return getLlama({gpu: false, build: "never", maxThreads: 1, logLevel: LlamaLogLevel.error});
}

// A context with float32 KV cache (the default float16 cache would round what we compare).
async function context(model, lora) {
    return model.createContext({
        contextSize: 256, sequences: 1, threads: 1, flashAttention: false,
        experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
        ...(lora ? {lora: {adapters: [{filePath: lora, scale: 1}]}} : {}),
    });
}

async function generate([modelPath, lora, n]) {
    const model = await (await llama()).loadModel({modelPath});
    const ctx = await context(model, lora === "-" ? null : lora);
    for (const line of lines()) {
        const seq = ctx.getSequence();
        const out = [];
        let eos = false;
        if (+n > 0)
            for await (const t of seq.evaluate(ids(line), {temperature: 0})) {
                if (model.isEogToken(t)) { eos = true; break; }
                out.push(t);
                if (out.length >= +n) break;
            }
        console.log([...out, ...(eos ? ["eos"] : [])].join(" "));
        seq.dispose();
    }
}

async function tokenize([modelPath]) {
    const model = await (await llama()).loadModel({modelPath, vocabOnly: true});
    for (const line of lines()) console.log(Array.from(model.tokenize(unescape(line), true)).join(" "));
}

// The next-token distribution after a prompt: [top token, Map token -> probability].
async function next(ctx, prompt) {
    const seq = ctx.getSequence();
    const input = prompt.map((t, i) => i + 1 < prompt.length ? t : [t, {generateNext: {probabilities: true, options: {temperature: 1, topK: 0, topP: 1, minP: 0}}}]);
    const res = await seq.controlledEvaluate(input);
    seq.dispose();
    const probs = res[prompt.length - 1].next.probabilities;
    return [probs.keys().next().value, probs];
}

async function probs([a, b]) {
    const l = await llama();
    const ctxs = [await context(await l.loadModel({modelPath: a})), await context(await l.loadModel({modelPath: b}))];
    for (const line of lines()) {
        const [[ta, pa], [tb, pb]] = [await next(ctxs[0], ids(line)), await next(ctxs[1], ids(line))];
        let most = 0;
        for (const [t, p] of pa) most = Math.max(most, Math.abs(p - (pb.get(t) ?? 0)));
        console.log(`${ta} ${tb} ${most.toPrecision(3)}`);
    }
}

async function meta([file]) {
    const {gguf} = await import(NM + "/@huggingface/gguf/dist/index.js");
    const {metadata, tensorInfos} = await gguf(file, {allowLocalFile: true});
    for (const [key, v] of Object.entries(metadata)) {
        if (["version", "tensor_count", "kv_count"].includes(key)) continue;  // the header, not metadata
        const value = Array.isArray(v) ? `[${v.length}]` : typeof v === "number" && !Number.isInteger(v) ? String(+v.toPrecision(6)) : String(v);
        console.log(`${key}\t${value.replace(/\n/g, "\\n")}`);
    }
    const {GGMLQuantizationType} = await import(NM + "/@huggingface/gguf/dist/index.js");
    for (const t of tensorInfos) console.log(`tensor\t${t.name}\t${GGMLQuantizationType[t.dtype]}\t${t.shape.join(",")}`);
}

async function version() {
    const l = await llama();
    console.log(`llama.cpp ${l.llamaCppRelease.repo} ${l.llamaCppRelease.release}`);
}

const modes = {generate, tokenize, probs, meta, version};
if (!modes[mode]) { console.error(`gguf_check.mjs: unknown mode ${mode}`); process.exit(2); }
await modes[mode](args);
process.exit(0);
