// BLEU-4 and ROUGE-L tests: hand-computed examples (worked out in the comments), the mteval-v13a
// tokenisation rules, the PTB-like ROUGE tokenisation, and the reference file formats.
#include "test.h"
#include "metrics.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

static bool tokens_are(const TokenList *t, const char *const *expect, int n) {
    if (t->n != n) return false;
    for (int i = 0; i < n; i++)
        if (strcmp(t->tok[i], expect[i])) return false;
    return true;
}

static void print_tokens(const TokenList *t) {
    fprintf(stderr, "  got %d tokens:", t->n);
    for (int i = 0; i < t->n; i++) fprintf(stderr, " [%s]", t->tok[i]);
    fprintf(stderr, "\n");
}

TEST(metrics_bleu_tokenisation) {
    TokenList t;
    // "!" and ";" are in mteval's punctuation class; "," and "." split unless next to a digit;
    // the apostrophe and "-" stay inside words, but a "-" after a digit is split; lowercased.
    metrics_tokenize_bleu("Hello, World! It's 3.5 stars; \xC2\xA3" "20-25.", &t);
    const char *e1[] = {"hello", ",", "world", "!", "it's", "3.5", "stars", ";", "\xC2\xA3" "20", "-", "25", "."};
    if (!tokens_are(&t, e1, 12)) print_tokens(&t);
    CHECK(tokens_are(&t, e1, 12));
    tokens_free(&t);
    // family-friendly stays; 1,000 stays; "a.b" splits; SGML entities; "/" and "_" split.
    metrics_tokenize_bleu("A family-friendly place, 1,000 seats &amp; a.b x/y_z", &t);
    const char *e2[] = {"a", "family-friendly", "place", ",", "1,000", "seats", "&", "a", ".", "b", "x", "/", "y", "_", "z"};
    if (!tokens_are(&t, e2, 15)) print_tokens(&t);
    CHECK(tokens_are(&t, e2, 15));
    tokens_free(&t);
    // Non-ASCII capitals lowercase too; non-breaking space is whitespace.
    metrics_tokenize_bleu("CAF\xC3\x89\xC2\xA0\xC3\x89TAGE", &t);
    const char *e3[] = {"caf\xC3\xA9", "\xC3\xA9tage"};
    CHECK(tokens_are(&t, e3, 2));
    tokens_free(&t);
    // An empty sentence is one empty token (Python: "".split(" ") == [""]), as pymteval counts it.
    metrics_tokenize_bleu("   ", &t);
    CHECK(t.n == 1 && t.tok[0][0] == 0);
    tokens_free(&t);
}

// A perfect match is BLEU 1 (100): every n-gram precision 1, hypothesis as long as the reference.
TEST(metrics_bleu_perfect) {
    BleuStats s = {0};
    const char *ref[] = {"The cat sat on the mat."};
    bleu_add(&s, "the cat sat on the mat .", ref, 1);  // 7 tokens either way
    double p[4], bp;
    CHECK_NEAR(bleu_score(&s, p, &bp), 1.0, 1e-12);
    CHECK(s.hits[0] == 7 && s.hits[3] == 4 && s.cand_len[3] == 4 && s.ref_len == 7);
    CHECK_NEAR(bp, 1.0, 0);
}

// Two segments, worked out by hand:
//  1. hyp "the cat is on the mat" (6), refs "there is a cat on the mat" (7), "the cat sat on the mat" (6)
//     1-grams: the x2 (ref 2 has 2), cat, is, on, mat -> 6/6
//     2-grams: the cat, on the, the mat match; cat is, is on do not -> 3/5
//     3-grams: only "on the mat" -> 1/4;  4-grams: none -> 0/3;  closest reference length 6
//  2. hyp "a dog barks very loudly" (5), refs "the dog barks very loudly" (5), "a dog is barking" (4)
//     1-grams 5/5 ("a" from ref 2); 2-grams a dog (ref 2), dog barks, barks very, very loudly -> 4/4
//     3-grams dog barks very, barks very loudly -> 2/3;  4-grams dog barks very loudly -> 1/2;  closest 5
//  Corpus: hits 11, 7, 3, 1 over 11, 9, 7, 5; c = r = 11 so BP = 1;
//  BLEU = (11/11 * 7/9 * 3/7 * 1/5)^(1/4) = (1/15)^(1/4) = 0.508133
TEST(metrics_bleu_two_sentences) {
    BleuStats s = {0};
    const char *r1[] = {"there is a cat on the mat", "the cat sat on the mat"};
    const char *r2[] = {"the dog barks very loudly", "a dog is barking"};
    bleu_add(&s, "the cat is on the mat", r1, 2);
    bleu_add(&s, "a dog barks very loudly", r2, 2);
    CHECK(s.hits[0] == 11 && s.hits[1] == 7 && s.hits[2] == 3 && s.hits[3] == 1);
    CHECK(s.cand_len[0] == 11 && s.cand_len[1] == 9 && s.cand_len[2] == 7 && s.cand_len[3] == 5);
    CHECK(s.ref_len == 11);
    double p[4], bp;
    CHECK_NEAR(bleu_score(&s, p, &bp), pow(15.0, -0.25), 1e-12);
    CHECK_NEAR(p[1], 7.0 / 9, 1e-12);
    CHECK_NEAR(bp, 1.0, 0);
    // The same through metrics_score.
    char *hyps[] = {"the cat is on the mat", "a dog barks very loudly"};
    char **refs[] = {(char **)r1, (char **)r2};
    int nr[] = {2, 2};
    MetricScores m;
    metrics_score(&m, hyps, 2, refs, nr);
    CHECK_NEAR(m.bleu, 0.5081327481546147, 1e-12);
}

// Brevity penalty: hyp "the cat sat on the" (5) against "the cat sat on the mat" (6): every
// precision is 1 (5/5, 4/4, 3/3, 2/2), BP = exp(1 - 6/5) = exp(-0.2) = 0.818731.
// With references of 4 and 6 tokens both are 1 away: the shorter (4) is taken, c > r, BP = 1.
TEST(metrics_bleu_brevity_penalty) {
    BleuStats s = {0};
    const char *r[] = {"the cat sat on the mat"};
    bleu_add(&s, "the cat sat on the", r, 1);
    double bp;
    CHECK_NEAR(bleu_score(&s, NULL, &bp), exp(-0.2), 1e-12);
    CHECK_NEAR(bp, exp(-0.2), 1e-12);
    BleuStats t = {0};
    const char *r2[] = {"the cat sat on", "the cat sat on the mat"};
    bleu_add(&t, "the cat sat on the", r2, 2);
    CHECK(t.ref_len == 4);
    CHECK_NEAR(bleu_score(&t, NULL, &bp), 1.0, 1e-12);
}

// Clipping: "the" x7 against references holding "the" at most twice: 2/7 unigram precision.
TEST(metrics_bleu_clipping) {
    BleuStats s = {0};
    const char *r[] = {"the cat is on the mat", "there is a cat on the mat"};
    bleu_add(&s, "the the the the the the the", r, 2);
    CHECK(s.hits[0] == 2 && s.cand_len[0] == 7);
    CHECK(s.hits[1] == 0);
    // pymteval adds len - n + 1 even when negative: a 2-token hypothesis adds 2, 1, 0, -1.
    BleuStats u = {0};
    bleu_add(&u, "a b", r, 2);
    CHECK(u.cand_len[0] == 2 && u.cand_len[1] == 1 && u.cand_len[2] == 0 && u.cand_len[3] == -1);
}

TEST(metrics_rouge_tokenisation) {
    TokenList t;
    metrics_tokenize_rouge("The Eagle, a coffee shop, isn't cheap: \xC2\xA3" "20-25.", &t);
    const char *e[] = {"the", "eagle", "a", "coffee", "shop", "is", "n't", "cheap", "\xC2\xA3", "20-25"};
    if (!tokens_are(&t, e, 10)) print_tokens(&t);
    CHECK(tokens_are(&t, e, 10));
    tokens_free(&t);
    metrics_tokenize_rouge("\"Children's\" (family-friendly) rated 5 out of 5...", &t);
    const char *e2[] = {"children", "'s", "family-friendly", "rated", "5", "out", "of", "5"};
    if (!tokens_are(&t, e2, 8)) print_tokens(&t);
    CHECK(tokens_are(&t, e2, 8));
    tokens_free(&t);
    metrics_tokenize_rouge(" . , ", &t);
    CHECK(t.n == 1 && t.tok[0][0] == 0);
    tokens_free(&t);
}

// ROUGE-L by hand:
//  hyp "the cat was found under the bed" (7), ref "the cat was under the bed" (6): LCS 6,
//  P = 6/7, R = 1, F = (1 + 1.44) P R / (R + 1.44 P) = 2.0914286 / 2.2342857 = 0.9360614
//  hyp "a b c d" (4), refs "a b x" (LCS 2: P 2/4, R 2/3) and "c d e f g h" (LCS 2: P 2/4, R 2/6):
//  max P = 1/2, max R = 2/3 (from different references), F = 2.44 (1/3) / (2/3 + 0.72) = 0.5865385
TEST(metrics_rouge_l) {
    const char *r1[] = {"the cat was under the bed"};
    CHECK_NEAR(rouge_l("The cat was found under the bed.", r1, 1), 2.44 * (6.0 / 7) / (1 + 1.44 * 6.0 / 7), 1e-12);
    CHECK_NEAR(rouge_l("the cat was found under the bed", r1, 1), 0.93606138, 1e-8);
    const char *r2[] = {"a b x", "c d e f g h"};
    CHECK_NEAR(rouge_l("a b c d", r2, 2), 2.44 * (0.5 * 2.0 / 3) / (2.0 / 3 + 1.44 * 0.5), 1e-12);
    CHECK_NEAR(rouge_l("a b c d", r2, 2), 0.5865385, 1e-7);
    const char *r3[] = {"nothing in common"};
    CHECK(rouge_l("a b c d", r3, 1) == 0);
    CHECK_NEAR(rouge_l("identical words here", (const char *[]){"Identical words here."}, 1), 1.0, 1e-12);
}

static char *write_tmp(const char *name, const char *text) {
    char *path = path_join(test_tmpdir(), name);
    write_file_atomic(path, text, strlen(text));
    return path;
}

TEST(metrics_reference_files) {
    RefGroups g;
    // blank-line-separated groups; several blank lines are one separator; lines are stripped
    char *p = write_tmp("refs.txt", "a one\n  a two  \n\n\nb one\n\nc one\nc two\nc three\n");
    CHECK_MSG(metrics_read_refs(p, 3, &g) == 0, "%s", peft_last_error());
    CHECK(g.n == 3 && g.n_refs[0] == 2 && g.n_refs[1] == 1 && g.n_refs[2] == 3);
    CHECK(!strcmp(g.refs[0][1], "a two") && !strcmp(g.refs[2][2], "c three"));
    ref_groups_free(&g);
    CHECK(metrics_read_refs(p, 4, &g) != 0);
    CHECK(strstr(peft_last_error(), "3 reference groups for 4 hypotheses") != NULL);
    free(p);
    // no blank line: one reference per line
    p = write_tmp("single.txt", "x\ny\n");
    CHECK(metrics_read_refs(p, 2, &g) == 0 && g.n == 2 && g.n_refs[0] == 1 && !strcmp(g.refs[1][0], "y"));
    ref_groups_free(&g);
    free(p);
    // e2e CSV: header mr,ref; quoted commas; consecutive equal mr grouped; the mis-encoded pound fixed
    p = write_tmp("refs.csv", "mr,ref\n\"name[A], food[Thai]\",A serves Thai food.\n\"name[A], food[Thai]\",\"Thai food, at A.\"\n"
                              "\"name[B]\",B costs \xC3\x82\xC2\xA3" "20.\n");
    CHECK_MSG(metrics_read_refs(p, 2, &g) == 0, "%s", peft_last_error());
    CHECK(g.n == 2 && g.n_refs[0] == 2 && g.n_refs[1] == 1);
    CHECK(!strcmp(g.refs[0][1], "Thai food, at A.") && !strcmp(g.refs[1][0], "B costs \xC2\xA3" "20."));
    ref_groups_free(&g);
    free(p);
    // hypotheses: one per line, stripped, empty lines kept
    p = write_tmp("hyp.txt", " first \n\nthird\n");
    char **lines;
    int n = metrics_read_lines(p, &lines);
    CHECK(n == 3 && !strcmp(lines[0], "first") && !strcmp(lines[1], "") && !strcmp(lines[2], "third"));
    metrics_free_lines(lines, n);
    free(p);
}
