// test_data.c: the data loader: text packing, JSONL (text, prompt/completion, chat), CSV with
// quoting, truncation counts, the cache, splits, batches, and errors that name file and line.
#include "test.h"
#include "helpers.h"
#include "config.h"
#include "data.h"
#include "json_bytes.h"
#include "model.h"
#include "tokenizer.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// ---------------------------------------------------------------------------------------------
// Helpers

static char *write_tmp(const char *dir, const char *name, const char *text) {
    char *p = path_join(dir, name);
    write_file_atomic(p, text, strlen(text));
    return p;
}

static DataOptions opts(int seq_len) {
    DataOptions o = {0};
    o.seq_len = seq_len;
    o.no_cache = true;
    return o;
}

static const int32_t *seq_ids(const Dataset *ds, int i, int *len) {
    *len = (int)(ds->offset[i + 1] - ds->offset[i]);
    return ds->ids + ds->offset[i];
}

// The decoded text of sequence i's tokens that carry a loss.
static char *loss_text(const Dataset *ds, const Tokenizer *tok, int i) {
    int len;
    seq_ids(ds, i, &len);
    int32_t *ids = xmalloc(sizeof(int32_t) * len);
    int n = 0;
    for (int k = 0; k < len; k++)
        if (ds->labels[ds->offset[i] + k] != -100) ids[n++] = ds->labels[ds->offset[i] + k];
    size_t k;
    char *s = tokenizer_decode(tok, ids, n, &k);
    free(ids);
    return s;
}

static char *seq_text(const Dataset *ds, const Tokenizer *tok, int i) {
    int len;
    const int32_t *ids = seq_ids(ds, i, &len);
    size_t k;
    return tokenizer_decode(tok, ids, len, &k);
}

#define CHECK_STR(got, want) CHECK_MSG(strcmp((got), (want)) == 0, "got \"%s\", want \"%s\"", (got), (want))

// ---------------------------------------------------------------------------------------------

TEST(data_tiny_tokenizer_loads) {
    Tokenizer *tok = tokenizer_load(test_tiny_model());
    CHECK_MSG(tok, "%s", peft_last_error());
    int32_t *ids;
    int n;
    CHECK(tokenizer_encode(tok, "Hi there\n<|endoftext|>", 22, &ids, &n) == 0);
    CHECK(n == 10 && ids[0] == 'H' && ids[2] == ' ' && ids[8] == '\n' && ids[9] == 256);
    CHECK(tokenizer_eos(tok) == 256 && tokenizer_vocab_size(tok) == 257);
    size_t k;
    char *back = tokenizer_decode(tok, ids, n, &k);
    CHECK_STR(back, "Hi there\n<|endoftext|>");
    free(back);
    free(ids);
    tokenizer_free(tok);
}

TEST(data_jsonl_text_and_prompt_completion) {
    const char *dir = test_tmpdir();
    char *path = write_tmp(dir, "d.jsonl",
                           "{\"text\": \"hello\"}\n"
                           "\n"
                           "{\"prompt\": \"Q: 2+2?\", \"completion\": \" A: 4\"}\n");
    Tokenizer *tok = tokenizer_load(test_tiny_model());
    Dataset ds;
    DataOptions o = opts(64);
    CHECK_MSG(dataset_load(&ds, path, tok, test_tiny_model(), &o) == 0, "%s", peft_last_error());
    CHECK(ds.n_seq == 2 && ds.n_examples == 2 && ds.n_truncated == 0);
    char *s = seq_text(&ds, tok, 0), *l = loss_text(&ds, tok, 0);
    CHECK_STR(s, "hello<|endoftext|>");
    CHECK_STR(l, "hello<|endoftext|>");
    free(s);
    free(l);
    s = seq_text(&ds, tok, 1);
    l = loss_text(&ds, tok, 1);
    CHECK_STR(s, "Q: 2+2? A: 4<|endoftext|>");  // JSONL: prompt and completion joined as given
    CHECK_STR(l, " A: 4<|endoftext|>");         // the loss is on the completion only
    free(s);
    free(l);
    CHECK(ds.n_loss_tokens == 5 + 5 + 1);  // "ello<eot>" (the first token predicts nothing) + " A: 4<eot>"
    dataset_free(&ds);
    tokenizer_free(tok);
    free(path);
}

// An empty text is an example of no tokens but eos (dropped: nothing to learn); its empty ids were
// copied to a NULL buffer (UBSan: null pointer passed to memcpy; found by fuzz/fuzz_chat.c).
TEST(data_jsonl_empty_text) {
    const char *dir = test_tmpdir();
    char *path = write_tmp(dir, "d.jsonl", "{\"text\": \"\"}\n{\"text\": \"hi\"}\n");
    Tokenizer *tok = tokenizer_load(test_tiny_model());
    Dataset ds;
    DataOptions o = opts(64);
    CHECK_MSG(dataset_load(&ds, path, tok, test_tiny_model(), &o) == 0, "%s", peft_last_error());
    CHECK(ds.n_seq == 1 && ds.n_examples == 2 && ds.n_dropped == 1);
    dataset_free(&ds);
    tokenizer_free(tok);
    free(path);
}

TEST(data_csv_quoting_and_e2e_columns) {
    const char *dir = test_tmpdir();
    char *path = write_tmp(dir, "e2e.csv",
                           "mr,ref\r\n"
                           "\"name[A], food[Thai]\",\"A serves \"\"Thai\"\" food, cheaply.\"\r\n"
                           "plain,\"two\nlines\"\n");
    Tokenizer *tok = tokenizer_load(test_tiny_model());
    Dataset ds;
    DataOptions o = opts(128);
    CHECK_MSG(dataset_load(&ds, path, tok, test_tiny_model(), &o) == 0, "%s", peft_last_error());
    CHECK(ds.n_seq == 2);
    char *s = seq_text(&ds, tok, 0), *l = loss_text(&ds, tok, 0);
    CHECK_STR(s, "name[A], food[Thai]\nA serves \"Thai\" food, cheaply.<|endoftext|>");  // mr -> prompt, newline, ref
    CHECK_STR(l, "A serves \"Thai\" food, cheaply.<|endoftext|>");
    free(s);
    free(l);
    l = loss_text(&ds, tok, 1);
    CHECK_STR(l, "two\nlines<|endoftext|>");
    free(l);
    dataset_free(&ds);
    // Named columns and a separator.
    char *p2 = write_tmp(dir, "qa.csv", "id,question,answer\n1,why,because\n");
    o.prompt_column = "question";
    o.completion_column = "answer";
    o.separator = " => ";
    CHECK_MSG(dataset_load(&ds, p2, tok, test_tiny_model(), &o) == 0, "%s", peft_last_error());
    s = seq_text(&ds, tok, 0);
    CHECK_STR(s, "why => because<|endoftext|>");
    free(s);
    dataset_free(&ds);
    o.prompt_column = "nope";
    CHECK(dataset_load(&ds, p2, tok, test_tiny_model(), &o) != 0);
    CHECK_MSG(strstr(peft_last_error(), "qa.csv:1: no column \"nope\""), "%s", peft_last_error());
    tokenizer_free(tok);
    free(path);
    free(p2);
}

TEST(data_text_folder_is_packed) {
    const char *dir = test_tmpdir();
    char *sub = path_join(dir, "texts");
    make_dir(sub);
    char *a = write_tmp(sub, "a.txt", "abcdef"), *b = write_tmp(sub, "b.txt", "ghij");
    Tokenizer *tok = tokenizer_load(test_tiny_model());
    Dataset ds;
    DataOptions o = opts(4);
    CHECK_MSG(dataset_load(&ds, sub, tok, test_tiny_model(), &o) == 0, "%s", peft_last_error());
    // "abcdef<eot>ghij<eot>" = 12 tokens in blocks of 4; every token has a loss.
    CHECK(ds.n_seq == 3 && ds.n_examples == 2 && ds.n_truncated == 0 && ds.max_len == 4);
    char *s = seq_text(&ds, tok, 1);
    CHECK_STR(s, "ef<|endoftext|>g");
    free(s);
    CHECK(ds.n_loss_tokens == 3 * 3);
    dataset_free(&ds);
    tokenizer_free(tok);
    free(a);
    free(b);
    free(sub);
}

TEST(data_truncation_is_counted) {
    const char *dir = test_tmpdir();
    char *path = write_tmp(dir, "long.jsonl",
                           "{\"text\": \"short\"}\n"
                           "{\"text\": \"this one is much too long\"}\n"
                           "{\"prompt\": \"a prompt longer than the limit\", \"completion\": \"x\"}\n");
    Tokenizer *tok = tokenizer_load(test_tiny_model());
    Dataset ds;
    DataOptions o = opts(10);
    CHECK_MSG(dataset_load(&ds, path, tok, test_tiny_model(), &o) == 0, "%s", peft_last_error());
    // The third example keeps nothing of its completion: counted as truncated and dropped.
    CHECK_MSG(ds.n_seq == 2 && ds.n_truncated == 2 && ds.n_dropped == 1 && ds.max_len == 10, "n_seq %d truncated %d dropped %d",
              ds.n_seq, ds.n_truncated, ds.n_dropped);
    dataset_free(&ds);
    tokenizer_free(tok);
    free(path);
}

TEST(data_errors_name_file_and_line) {
    const char *dir = test_tmpdir();
    Tokenizer *tok = tokenizer_load(test_tiny_model());
    Dataset ds;
    DataOptions o = opts(32);
    struct { const char *name, *text, *want; } cases[] = {
        {"bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{\"text\": oops}\n", "bad.jsonl:3: invalid JSON"},
        {"keys.jsonl", "{\"text\": \"ok\"}\n{\"input\": \"x\"}\n", "keys.jsonl:2: no known fields"},
        {"types.jsonl", "{\"prompt\": \"p\", \"completion\": 5}\n", "types.jsonl:1: \"completion\" must be a string"},
        {"msgs.jsonl", "\n{\"messages\": [{\"role\": \"user\"}]}\n", "msgs.jsonl:2: messages[0].content must be a string"},
        {"quote.csv", "mr,ref\na,b\n\"c,d\n", "quote.csv:3: unterminated quoted field"},
        {"fields.csv", "mr,ref\na,b\nc,d,e\n", "fields.csv:3: 3 fields, but the header has 2"},
        {"after.csv", "mr,ref\n\"a\"x,b\n", "after.csv:2: unexpected character"},
        {"cols.csv", "a,b\n1,2\n", "cols.csv:1: no prompt/completion columns"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *p = write_tmp(dir, cases[i].name, cases[i].text);
        int rc = dataset_load(&ds, p, tok, test_tiny_model(), &o);
        free(p);
        CHECK_MSG(rc != 0, "%s loaded", cases[i].name);
        CHECK_MSG(strstr(peft_last_error(), cases[i].want), "%s: error \"%s\", want \"%s\"", cases[i].name, peft_last_error(), cases[i].want);
    }
    tokenizer_free(tok);
}

TEST(data_empty_dataset_is_an_error) {
    const char *dir = test_tmpdir();
    Tokenizer *tok = tokenizer_load(test_tiny_model());
    Dataset ds;
    DataOptions o = opts(32);
    const char *names[] = {"empty.txt", "blank.jsonl", "header.csv"}, *texts[] = {"", "\n\n  \n", "mr,ref\n"};
    for (int i = 0; i < 3; i++) {
        char *p = write_tmp(dir, names[i], texts[i]);
        CHECK_MSG(dataset_load(&ds, p, tok, test_tiny_model(), &o) != 0, "%s loaded", names[i]);
        CHECK_MSG(strstr(peft_last_error(), names[i]) && strstr(peft_last_error(), "empty"), "%s", peft_last_error());
        free(p);
    }
    char *missing = path_join(dir, "missing.jsonl");
    CHECK(dataset_load(&ds, missing, tok, test_tiny_model(), &o) != 0);
    CHECK(strstr(peft_last_error(), "missing.jsonl"));
    free(missing);
    tokenizer_free(tok);
}

TEST(data_cache_next_to_source_or_in_cache_dir) {
    const char *dir = test_tmpdir();
    char *src = path_join(dir, "src");
    make_dir(src);
    char *path = write_tmp(src, "d.jsonl", "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"text\": \"t\"}\n");
    Tokenizer *tok = tokenizer_load(test_tiny_model());
    DataOptions o = opts(16);
    o.no_cache = false;
    Dataset a, b;
    CHECK(dataset_load(&a, path, tok, test_tiny_model(), &o) == 0);
    CHECK(!a.from_cache && a.cache_path && !strncmp(a.cache_path, src, strlen(src)));
    CHECK(dataset_load(&b, path, tok, test_tiny_model(), &o) == 0);
    CHECK(b.from_cache && b.n_seq == a.n_seq && b.n_examples == a.n_examples);
    CHECK(!memcmp(a.ids, b.ids, sizeof(int32_t) * a.offset[a.n_seq]) && !memcmp(a.labels, b.labels, sizeof(int32_t) * a.offset[a.n_seq]));
    dataset_free(&b);
    // A changed source (another size) is tokenized again.
    free(write_tmp(src, "d.jsonl", "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"text\": \"tt\"}\n{\"text\": \"u\"}\n"));
    CHECK(dataset_load(&b, path, tok, test_tiny_model(), &o) == 0);
    CHECK(!b.from_cache && b.n_seq == 3);
    dataset_free(&b);
    // A read-only folder: the cache goes to cache_dir.
    char *cache = path_join(dir, "cache");
    o.cache_dir = cache;
    free(write_tmp(src, "e.jsonl", "{\"text\": \"read-only\"}\n"));
    char *e = path_join(src, "e.jsonl");
    chmod(src, 0555);
    CHECK(dataset_load(&b, e, tok, test_tiny_model(), &o) == 0);
    CHECK_MSG(!b.from_cache && b.cache_path && !strncmp(b.cache_path, cache, strlen(cache)), "%s", b.cache_path ? b.cache_path : "(none)");
    dataset_free(&b);
    CHECK(dataset_load(&b, e, tok, test_tiny_model(), &o) == 0);
    CHECK(b.from_cache);
    dataset_free(&b);
    chmod(src, 0755);
    dataset_free(&a);
    tokenizer_free(tok);
    free(path);
    free(src);
    free(cache);
    free(e);
}

TEST(data_split_and_batches) {
    const char *dir = test_tmpdir();
    char buf[4096] = "";
    for (int i = 0; i < 20; i++) snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "{\"text\": \"example %d%s\"}\n", i, i % 3 ? "" : " longer");
    char *path = write_tmp(dir, "d.jsonl", buf);
    Tokenizer *tok = tokenizer_load(test_tiny_model());
    Dataset ds, tr, va, tr2, va2;
    DataOptions o = opts(64);
    CHECK(dataset_load(&ds, path, tok, test_tiny_model(), &o) == 0 && ds.n_seq == 20);
    CHECK(dataset_split(&ds, 0.2, 1, &tr, &va) == 0);
    CHECK(tr.n_seq == 16 && va.n_seq == 4 && tr.n_loss_tokens + va.n_loss_tokens == ds.n_loss_tokens);
    CHECK(dataset_split(&ds, 0.2, 1, &tr2, &va2) == 0);
    CHECK(!memcmp(va.ids, va2.ids, sizeof(int32_t) * va.offset[va.n_seq]));  // the same seed, the same split
    CHECK(dataset_split(&ds, 0.999, 1, &tr2, &va2) != 0);  // nothing left to train on
    int idx[3] = {0, 3, 1};
    int32_t ids[3 * 64], labels[3 * 64];
    int T = dataset_batch(&ds, idx, 3, ids, labels);
    CHECK(T == 17);  // "example 0 longer<eot>" and "example 3 longer<eot>"
    CHECK(ids[T - 1] == 256 && labels[T - 1] == 256);                  // an eos: learned
    CHECK(ids[2 * T + 9] == 256 && labels[2 * T + 9] == 256);          // "example 1<eot>" ends ...
    CHECK(ids[2 * T + 10] == 256 && labels[2 * T + 10] == -100);       // ... then padding: no loss
    CHECK(count_loss_tokens(labels, 3, T) == 16 + 16 + 9);
    dataset_free(&ds);
    dataset_free(&tr);
    dataset_free(&va);
    dataset_free(&tr2);
    dataset_free(&va2);
    tokenizer_free(tok);
    free(path);
}

// tokenizer_config.json with a chat template (NULL: none), bos_token "<s>" and eos_token "</s>".
static void write_chat_template(const char *dir, const char *tmpl) {
    cJSON *j = cJSON_CreateObject();
    if (tmpl) cJSON_AddStringToObject(j, "chat_template", tmpl);
    cJSON_AddStringToObject(j, "eos_token", "</s>");
    cJSON_AddStringToObject(j, "bos_token", "<s>");
    char *text = cJSON_Print(j), *p = path_join(dir, "tokenizer_config.json");
    write_file_atomic(p, text, strlen(text));
    free(text);
    free(p);
    cJSON_Delete(j);
}

// A model folder of its own: the tiny model's byte-level tokenizer, and tokenizer_config.json.
static const char *chat_model_dir(const char *tmpl) {
    const char *dir = test_tmpdir();
    char *src = path_join(test_tiny_model(), "tokenizer.json"), *dst = path_join(dir, "tokenizer.json");
    size_t len;
    char *tj = read_file(src, &len);
    write_file_atomic(dst, tj, len);
    free(tj);
    free(src);
    free(dst);
    write_chat_template(dir, tmpl);
    return dir;
}

// Loads path with the tokenizer of dir; the text and the loss text of sequence 0 into s / l.
static int load_one(const char *dir, const char *path, const DataOptions *o, char **s, char **l) {
    Tokenizer *tok = tokenizer_load(dir);
    Dataset ds;
    int rc = dataset_load(&ds, path, tok, dir, o);
    if (!rc) {
        *s = seq_text(&ds, tok, 0);
        *l = loss_text(&ds, tok, 0);
        dataset_free(&ds);
    }
    tokenizer_free(tok);
    return rc;
}

#define QWEN2 "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}" \
              "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}" \
              "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" \
              "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
#define LLAMA2 "{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'].strip() + ' [/INST]' }}" \
               "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'].strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
#define LLAMA3 "{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + " \
               "m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}" \
               "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"

TEST(data_chat_messages_templates) {
    const char *dir = chat_model_dir(NULL);
    char *path = write_tmp(dir, "chat.jsonl",
                           "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"},"
                           " {\"role\": \"user\", \"content\": \"bye\"}, {\"role\": \"assistant\", \"content\": \"ok\"}]}\n");
    DataOptions o = opts(256);
    char *s, *l;
    // No template: ChatML.
    CHECK_MSG(load_one(dir, path, &o, &s, &l) == 0, "%s", peft_last_error());
    CHECK_STR(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n"
                 "<|im_start|>assistant\nok<|im_end|>\n");
    CHECK_STR(l, "yo<|im_end|>ok<|im_end|>");  // loss on the assistant turns (and their end of turn) only
    free(s);
    free(l);
    // Qwen2's template (ChatML with a default system message).
    write_chat_template(dir, QWEN2);
    CHECK_MSG(load_one(dir, path, &o, &s, &l) == 0, "%s", peft_last_error());
    CHECK_STR(s, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                 "<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n");
    CHECK_STR(l, "yo<|im_end|>ok<|im_end|>");
    free(s);
    free(l);
    // Llama-2's: the end of turn is " </s>" after the stripped content.
    write_chat_template(dir, LLAMA2);
    CHECK_MSG(load_one(dir, path, &o, &s, &l) == 0, "%s", peft_last_error());
    CHECK_STR(l, "yo </s>ok </s>");
    free(s);
    free(l);
    // --train-on-prompt: every token.
    o.train_on_prompt = true;
    CHECK_MSG(load_one(dir, path, &o, &s, &l) == 0, "%s", peft_last_error());
    CHECK_STR(l, s);
    free(s);
    free(l);
    free(path);
}

TEST(data_chat_spans_are_located_in_the_rendering) {
    const char *dir = chat_model_dir(LLAMA3);
    DataOptions o = opts(512);
    char *s, *l;
    // "a" is in "assistant" too, and the user said "a" first: the turn's own content is found;
    // trimmed content is found as the template trims it; an empty content trains its end of turn.
    char *path = write_tmp(dir, "c.jsonl",
                           "{\"messages\": [{\"role\": \"system\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"a\"},"
                           " {\"role\": \"assistant\", \"content\": \"a\"}, {\"role\": \"user\", \"content\": \"q\"},"
                           " {\"role\": \"assistant\", \"content\": \"  padded \\n\"}, {\"role\": \"user\", \"content\": \"r\"},"
                           " {\"role\": \"assistant\", \"content\": \"\"}]}\n");
    CHECK_MSG(load_one(dir, path, &o, &s, &l) == 0, "%s", peft_last_error());
    CHECK_STR(l, "a<|eot_id|>padded<|eot_id|><|eot_id|>");
    const char *first = strstr(s, "<|start_header_id|>assistant<|end_header_id|>\n\na<|eot_id|>");
    CHECK(first);
    free(s);
    free(l);
    free(path);
    // A template that writes the tools first: the generation prompt is rendered with them too, so an
    // assistant content "assistant" is found after its turn's header, not in it.
    write_chat_template(dir, "{% if tools %}<|im_start|>system\n{{ tools | tojson }}<|im_end|>\n{% endif %}"
                             "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}");
    path = write_tmp(dir, "t.jsonl", "{\"tools\": [{\"name\": \"f\"}], \"messages\": [{\"role\": \"user\", \"content\": \"hi\"},"
                                     " {\"role\": \"assistant\", \"content\": \"assistant\"}]}\n");
    CHECK_MSG(load_one(dir, path, &o, &s, &l) == 0, "%s", peft_last_error());
    CHECK_STR(l, "assistant<|im_end|>");
    free(s);
    free(l);
    free(path);
    // A template that rewrites assistant contents cannot place the loss: refused, naming the message.
    write_chat_template(dir, "{% for m in messages %}{{ m['role'] + ': ' + m['content'] | upper + '\\n' }}{% endfor %}");
    path = write_tmp(dir, "d.jsonl", "\n{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"yes\"}]}\n");
    CHECK(load_one(dir, path, &o, &s, &l) != 0);
    CHECK_MSG(strstr(peft_last_error(), "d.jsonl:2: messages[1]:") && strstr(peft_last_error(), "--train-on-prompt"), "%s", peft_last_error());
    // ... it trains with the loss on everything.
    o.train_on_prompt = true;
    CHECK_MSG(load_one(dir, path, &o, &s, &l) == 0, "%s", peft_last_error());
    CHECK_STR(l, "user: X\nassistant: YES\n");
    free(s);
    free(l);
    free(path);
    // A template error is the data's error, with the template's position.
    write_chat_template(dir, "{{ raise_exception('no system role') if messages[0].role == 'system' }}{% for m in messages %}{{ m.content }}{% endfor %}");
    path = write_tmp(dir, "e.jsonl", "{\"messages\": [{\"role\": \"system\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"y\"}]}\n");
    CHECK(load_one(dir, path, &o, &s, &l) != 0);
    CHECK_MSG(strstr(peft_last_error(), "e.jsonl:1: ") && strstr(peft_last_error(), "tokenizer_config.json:1:4: raise_exception: no system role"), "%s", peft_last_error());
    free(path);
}

TEST(data_chat_template_render_and_end_of_turn) {
    ChatTemplate ct;
    cJSON *tokens = cJSON_Parse("{\"eos_token\": \"</s>\", \"bos_token\": \"<s>\"}");
    CHECK(chat_template_parse(&ct, QWEN2, strlen(QWEN2), "t", tokens) == 0);
    CHECK_STR(ct.end_of_turn, "<|im_end|>");
    const char *json = "[{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", \"content\": \"hel\\u0000lo\"}]";
    cJSON *msgs = json_parse_bytes(json, strlen(json));
    CHECK(msgs);
    char *text;
    size_t len;
    CHECK(chat_template_render(&ct, msgs, NULL, true, &text, &len) == 0);
    const char want[] = "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhel\0lo<|im_end|>\n<|im_start|>assistant\n";
    CHECK(len == sizeof want - 1 && !memcmp(text, want, len));
    free(text);
    chat_template_free(&ct);
    const char *tmpls[] = {LLAMA2, LLAMA3, "{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}",
                           "{% for m in messages %}{{ m.content }}\n{% endfor %}"};
    const char *eot[] = {"</s>", "<|eot_id|>", "<end_of_turn>", ""};
    for (int i = 0; i < 4; i++) {
        CHECK_MSG(chat_template_parse(&ct, tmpls[i], strlen(tmpls[i]), "t", tokens) == 0, "%s", peft_last_error());
        CHECK_MSG(!strcmp(ct.end_of_turn, eot[i]), "template %d: end of turn \"%s\"", i, ct.end_of_turn);
        chat_template_free(&ct);
    }
    cJSON_Delete(msgs);
    cJSON_Delete(tokens);
}

TEST(data_chat_template_files) {
    const char *dir = chat_model_dir(NULL);
    ChatTemplate ct;
    // The list-of-named-templates form: "default".
    char *p = write_tmp(dir, "tokenizer_config.json",
                        "{\"eos_token\": {\"content\": \"<eos>\"}, \"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"},"
                        " {\"name\": \"default\", \"template\": \"D{{ eos_token }}\"}]}");
    CHECK_MSG(chat_template_load(&ct, dir) == 0, "%s", peft_last_error());
    char *text;
    size_t len;
    cJSON *none = cJSON_CreateArray();
    CHECK(chat_template_render(&ct, none, NULL, false, &text, &len) == 0);
    CHECK_STR(text, "D<eos>");
    free(text);
    chat_template_free(&ct);
    free(p);
    p = write_tmp(dir, "tokenizer_config.json", "{\"chat_template\": [{\"name\": \"tool_use\", \"template\": \"T\"}]}");
    CHECK(chat_template_load(&ct, dir) != 0);
    CHECK_MSG(strstr(peft_last_error(), "tokenizer_config.json: \"chat_template\" lists named templates but none named \"default\""), "%s", peft_last_error());
    free(p);
    // chat_template.jinja comes first.
    p = write_tmp(dir, "chat_template.jinja", "J{{ messages | length }}\n");
    CHECK_MSG(chat_template_load(&ct, dir) == 0, "%s", peft_last_error());
    CHECK(chat_template_render(&ct, none, NULL, false, &text, &len) == 0);
    CHECK_STR(text, "J0");
    free(text);
    chat_template_free(&ct);
    free(p);
    p = write_tmp(dir, "chat_template.jinja", "{% for %}");
    CHECK(chat_template_load(&ct, dir) != 0);
    CHECK_MSG(strstr(peft_last_error(), "chat_template.jinja:1:8:"), "%s", peft_last_error());
    free(p);
    cJSON_Delete(none);
}

#define ALPACA_HEAD "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"

TEST(data_formats_alpaca_sharegpt_messages) {
    const char *dir = chat_model_dir(NULL);
    DataOptions o = opts(512);
    char *s, *l;
    // Alpaca as a JSON array: Stanford's prompt (with and without an input), the loss on output + eos.
    char *path = write_tmp(dir, "alpaca.json",
                           "[\n  {\"instruction\": \"Say hi\", \"input\": \"\", \"output\": \"hi\"},\n"
                           "  {\"instruction\": \"Add\", \"input\": \"2 2\", \"output\": \"4\"}\n]\n");
    Tokenizer *tok = tokenizer_load(dir);
    Dataset ds;
    CHECK_MSG(dataset_load(&ds, path, tok, dir, &o) == 0, "%s", peft_last_error());
    CHECK(ds.n_seq == 2);
    s = seq_text(&ds, tok, 0);
    CHECK_STR(s, ALPACA_HEAD "### Instruction:\nSay hi\n\n### Response:hi<|endoftext|>");
    free(s);
    s = seq_text(&ds, tok, 1);
    CHECK_STR(s, "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that "
                 "appropriately completes the request.\n\n### Instruction:\nAdd\n\n### Input:\n2 2\n\n### Response:4<|endoftext|>");
    free(s);
    l = loss_text(&ds, tok, 1);
    CHECK_STR(l, "4<|endoftext|>");
    free(l);
    dataset_free(&ds);
    // alpaca-chat: the same through the chat template.
    o.format = DATA_ALPACA_CHAT;
    CHECK_MSG(dataset_load(&ds, path, tok, dir, &o) == 0, "%s", peft_last_error());
    s = seq_text(&ds, tok, 1);
    CHECK_STR(s, "<|im_start|>user\nAdd\n\n2 2<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n");
    free(s);
    dataset_free(&ds);
    o.format = DATA_AUTO;
    free(path);
    // ShareGPT: roles mapped, a "system" field first.
    path = write_tmp(dir, "sg.jsonl", "{\"system\": \"S\", \"conversations\": [{\"from\": \"human\", \"value\": \"q\"}, {\"from\": \"gpt\", \"value\": \"r\"}]}\n");
    CHECK_MSG(load_one(dir, path, &o, &s, &l) == 0, "%s", peft_last_error());
    CHECK_STR(s, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\nr<|im_end|>\n");
    CHECK_STR(l, "r<|im_end|>");
    free(s);
    free(l);
    free(path);
    // Alpaca CSV.
    path = write_tmp(dir, "a.csv", "instruction,input,output\nSay hi,,hi\n");
    CHECK_MSG(load_one(dir, path, &o, &s, &l) == 0, "%s", peft_last_error());
    CHECK_STR(s, ALPACA_HEAD "### Instruction:\nSay hi\n\n### Response:hi<|endoftext|>");
    free(s);
    free(l);
    free(path);
    tokenizer_free(tok);
}

TEST(data_format_errors_name_file_line_and_field) {
    const char *dir = chat_model_dir(NULL);
    DataOptions o = opts(256);
    char *s, *l;
    static const struct { const char *name, *text, *want; DataFormat f; } cases[] = {
        {"r.jsonl", "{\"text\": \"ok\"}\n{\"conversations\": [{\"from\": \"wizard\", \"value\": \"x\"}]}\n",
         "r.jsonl:2: conversations[0].from is \"wizard\"", DATA_AUTO},
        {"m.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}, {\"role\": \"narrator\", \"content\": \"b\"}]}\n",
         "m.jsonl:1: messages[1].role is \"narrator\"", DATA_AUTO},
        {"c.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}\n", "c.jsonl:1: messages[0].content must be a string", DATA_AUTO},
        {"amb.jsonl", "{\"text\": \"t\", \"messages\": []}\n", "amb.jsonl:1: ambiguous record: it has the fields of several formats (\"messages\", \"text\")", DATA_AUTO},
        {"none.jsonl", "{\"question\": \"q\"}\n", "none.jsonl:1: no known fields", DATA_AUTO},
        {"a.json", "[{\"instruction\": \"i\", \"output\": \"o\"},\n {\"instruction\": \"i\"}]", "a.json:2: \"output\" is missing", DATA_AUTO},
        {"b.json", "[{\"instruction\": \"i\", \"output\": \"o\"}\n {\"x\": 1}]", "b.json:2: expected ',' or ']' after record 0", DATA_AUTO},
        {"f.jsonl", "{\"text\": \"t\"}\n", "f.jsonl:1: \"instruction\" is missing", DATA_ALPACA},
        {"t.jsonl", "{\"messages\": [{\"role\": \"assistant\", \"content\": null, \"tool_calls\": []}]}\n", "t.jsonl:1: an assistant message with \"tool_calls\"", DATA_AUTO},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *path = write_tmp(dir, cases[i].name, cases[i].text);
        o.format = cases[i].f;
        CHECK_MSG(load_one(dir, path, &o, &s, &l) != 0, "%s was accepted", cases[i].name);
        CHECK_MSG(strstr(peft_last_error(), cases[i].want), "%s: %s", cases[i].name, peft_last_error());
        free(path);
    }
}
