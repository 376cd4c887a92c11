// test_data.c: the data loader: text packing, JSONL (text, prompt/completion, chat), CSV with
// quoting, truncation counts, the cache, splits, batches, and errors that name file and line.
#include "test.h"
#include "helpers.h"
#include "../src/config.h"
#include "../src/data.h"
#include "../src/model.h"
#include "../src/tokenizer.h"
#include "../src/util.h"
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
        {"keys.jsonl", "{\"text\": \"ok\"}\n{\"input\": \"x\"}\n", "keys.jsonl:2: expected"},
        {"types.jsonl", "{\"prompt\": \"p\", \"completion\": 5}\n", "types.jsonl:1: \"prompt\" and \"completion\" must both be strings"},
        {"msgs.jsonl", "\n{\"messages\": [{\"role\": \"user\"}]}\n", "msgs.jsonl:2: messages[0] needs"},
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

static void write_chat_template(const char *dir, const char *tmpl) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "chat_template", tmpl);
    char *text = cJSON_Print(j), *p = path_join(dir, "tokenizer_config.json");
    write_file_atomic(p, text, strlen(text));
    free(text);
    free(p);
    cJSON_Delete(j);
}

TEST(data_chat_messages_chatml) {
    // A model folder of its own: the tokenizer plus a tokenizer_config.json with a chat template.
    const char *dir = test_tmpdir();
    char *src = path_join(test_tiny_model(), "tokenizer.json"), *dst = path_join(dir, "tokenizer.json");
    size_t len;
    char *tj = read_file(src, &len);
    write_file_atomic(dst, tj, len);
    free(tj);
    free(src);
    free(dst);
    char *path = write_tmp(dir, "chat.jsonl",
                           "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"},"
                           " {\"role\": \"user\", \"content\": \"bye\"}, {\"role\": \"assistant\", \"content\": \"ok\"}]}\n");
    Tokenizer *tok = tokenizer_load(dir);
    CHECK(tok);
    Dataset ds;
    DataOptions o = opts(256);
    // No template yet: an error naming the file.
    CHECK(dataset_load(&ds, path, tok, dir, &o) != 0);
    CHECK_MSG(strstr(peft_last_error(), "chat.jsonl:1:") && strstr(peft_last_error(), "tokenizer_config.json"), "%s", peft_last_error());
    // Qwen2's template (ChatML with a default system message).
    write_chat_template(dir, "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                             "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
                             "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                             "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}");
    CHECK_MSG(dataset_load(&ds, path, tok, dir, &o) == 0, "%s", peft_last_error());
    char *s = seq_text(&ds, tok, 0), *l = loss_text(&ds, tok, 0);
    CHECK_STR(s, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                 "<|im_start|>assistant\nyo<|im_end|>\n<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n");
    CHECK_STR(l, "yo<|im_end|>ok<|im_end|>");  // loss on the assistant turns only
    free(s);
    free(l);
    dataset_free(&ds);
    // A template that is not ChatML is refused, clearly.
    write_chat_template(dir, "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}");
    CHECK(dataset_load(&ds, path, tok, dir, &o) != 0);
    CHECK_MSG(strstr(peft_last_error(), "not a ChatML template"), "%s", peft_last_error());
    tokenizer_free(tok);
    free(path);
}

TEST(data_chat_template_render_generation_prompt) {
    ChatTemplate ct;
    CHECK(chat_template_parse(&ct, "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                                   "'<|im_end|>' + '\\n'}}{% endfor %}", "t") == 0);
    CHECK(ct.default_system == NULL);
    ChatMessage msgs[] = {{"system", "be brief"}, {"user", "hello"}};
    char *text;
    ChatSpan *spans;
    int n;
    CHECK(chat_template_render(&ct, msgs, 2, true, &text, &spans, &n) == 0);
    CHECK_STR(text, "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n");
    CHECK(n == 0);
    free(text);
    free(spans);
    ChatMessage bad[] = {{"tool", "x"}};
    CHECK(chat_template_render(&ct, bad, 1, false, &text, &spans, &n) != 0);
    CHECK(strstr(peft_last_error(), "\"tool\""));
    chat_template_free(&ct);
}
