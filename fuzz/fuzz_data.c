// fuzz_data.c: training and classification data files as `peft train` reads them. The input is one
// byte that picks the reader and its options, then the file. Bytes 0-5 of the first's low bits read
// it as language-model data (dataset_load: .jsonl, .json, .csv or plain text, with a record format,
// train_on_prompt and seq_len from the other bits); 6 and 7 as classification data (classify_data_load:
// .csv or .jsonl, text pair and labels by index, class name or, for a one-output model, a number).
// A dataset has sequences of 1..seq_len vocabulary ids whose labels are -100 or their own token,
// n_loss_tokens their count; a classification example is <s> ... </s> within seq_len, with labels
// in range (or finite). A refusal names the file.
#include "fuzz.h"
#include "classify.h"
#include "data.h"
#include "util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

// A RoBERTa with one output (regression) beside FUZZ_ROBERTA_CONFIG's three classes.
static const char *const REGRESSION_CONFIG =
    "{\"model_type\":\"roberta\",\"vocab_size\":257,\"hidden_size\":16,\"num_hidden_layers\":1,\"num_attention_heads\":2,"
    "\"intermediate_size\":24,\"max_position_embeddings\":40,\"type_vocab_size\":1,\"layer_norm_eps\":1e-5,"
    "\"pad_token_id\":1,\"bos_token_id\":256,\"eos_token_id\":256,\"hidden_act\":\"gelu\",\"num_labels\":1,"
    "\"problem_type\":\"regression\"}";

static void check_refusal(const char *path) {
    const char *name = strrchr(path, '/') + 1;
    FUZZ_CHECK(strstr(peft_last_error(), name), "a refusal that does not name the file: %s", peft_last_error());
}

static int check_dataset(const char *path, const Tokenizer *tok, const char *model_dir, const DataOptions *opt) {
    Dataset ds = {0};
    if (dataset_load(&ds, path, tok, model_dir, opt)) {
        check_refusal(path);
        return 0;
    }
    FUZZ_CHECK(ds.n_seq > 0, "an accepted dataset with no sequences");
    fuzz_check_dataset(&ds, tok, opt->seq_len);
    dataset_free(&ds);
    return 1;
}

static int check_classify(const char *path, const Model *m, const Tokenizer *tok, bool pair, int seq_len) {
    ClassifyColumns cols = {.text = pair ? "a" : NULL, .text_pair = pair ? "b" : NULL};
    ClassifyData d;
    if (classify_data_load(&d, path, m, tok, &cols, seq_len, true)) {
        check_refusal(path);
        return 0;
    }
    for (int i = 0; i < d.n; i++) {
        int n = d.len[i];
        FUZZ_CHECK(n >= 2 && n <= seq_len && n <= d.max_len, "example %d has %d tokens (seq_len %d)", i, n, seq_len);
        FUZZ_CHECK(d.ids[i][0] == m->cfg.bos_token_id && d.ids[i][n - 1] == m->cfg.eos_token_id, "example %d is not <s> ... </s>", i);
        for (int k = 0; k < n; k++)
            FUZZ_CHECK(d.ids[i][k] >= 0 && d.ids[i][k] < m->cfg.vocab_size && d.types[i][k] == 0, "example %d token %d: id %d type %d", i, k,
                       d.ids[i][k], d.types[i][k]);
        float y = d.labels[i];
        if (m->cfg.num_labels == 1) FUZZ_CHECK(isfinite(y), "example %d: label %g", i, y);
        else FUZZ_CHECK(y >= 0 && y < m->cfg.num_labels && y == floorf(y), "example %d: label %g of %d classes", i, y, m->cfg.num_labels);
    }
    classify_data_free(&d);
    return 1;
}

int fuzz_data(const uint8_t *data, size_t size) {
    static char *model_dir;
    static Tokenizer *tok;
    static Model *classifier, *regressor;
    if (!model_dir) {
        model_dir = fuzz_model_dir("data-gpt2", FUZZ_GPT2_CONFIG);
        char *c_dir = fuzz_model_dir("data-roberta", FUZZ_ROBERTA_CONFIG), *r_dir = fuzz_model_dir("data-regression", REGRESSION_CONFIG);
        char *c_config = path_join(c_dir, "config.json");  // as given: a random model's own config.json has no id2label
        FUZZ_CHECK(!write_file_atomic(c_config, FUZZ_ROBERTA_CONFIG, strlen(FUZZ_ROBERTA_CONFIG)), "%s", peft_last_error());
        free(c_config);
        FUZZ_CHECK((tok = tokenizer_load(model_dir)) && (classifier = model_load(c_dir)) && (regressor = model_load(r_dir)), "%s", peft_last_error());
        free(c_dir);
        free(r_dir);
    }
    if (size == 0) return 0;
    uint8_t pick = data[0];
    data++, size--;
    static const char *const names[] = {"data.jsonl", "data.json", "data.csv", "data.txt", "data.jsonl", "data.csv", "data.csv", "data.jsonl"};
    int kind = pick & 7;
    char *path = fuzz_write("data", names[kind], data, size);
    int accepted;
    if (kind < 6) {
        static const DataFormat formats[] = {DATA_AUTO, DATA_TEXT, DATA_PROMPT_COMPLETION, DATA_MESSAGES, DATA_SHAREGPT, DATA_ALPACA, DATA_ALPACA_CHAT, DATA_AUTO};
        DataOptions opt = {.seq_len = 2 + (pick >> 6) * 60, .format = formats[(pick >> 3) & 7], .train_on_prompt = kind == 5, .no_cache = true};
        accepted = check_dataset(path, tok, model_dir, &opt);
    } else {
        bool pair = pick & 8, regression = pick & 16;
        accepted = check_classify(path, regression ? regressor : classifier, tok, pair, 3 + (pick >> 5) * 5);
    }
    free(fuzz_clear("data"));
    free(path);
    return accepted;
}
