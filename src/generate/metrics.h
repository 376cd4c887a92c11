// metrics.h: corpus BLEU-4 and ROUGE-L as the E2E NLG Challenge's e2e-metrics computes them.
//
// BLEU: e2e-metrics' pymteval.BLEUScore (the mteval-v13a conventions): mteval-v13a tokenisation,
// case-insensitive, n-gram counts clipped by the largest count in any one reference, brevity
// penalty against the reference closest in length to each hypothesis (ties: the shorter), the
// geometric mean of the 1..4-gram precisions over the whole corpus.
//
// mteval-v13a tokenisation, in order (pymteval.NGramScore.tokenize):
//   1. delete "<skipped>"; delete "-\n"; "\n" -> " "; "&quot;" -> '"', "&amp;" -> '&', "&lt;" -> '<', "&gt;" -> '>'
//   2. pad with a space on each side
//   3. put spaces around each of  { | } ~ [ \ ] ^ _ ` ! " # $ % & ( ) * + : ; < = > ? @ /
//      (not around the apostrophe, hyphen, period or comma: "it's" and "family-friendly" stay whole)
//   4. "." and "," get spaces around them unless preceded by a digit, then unless followed by a
//      digit (so 3.5 and 1,000 stay whole), applied as two left-to-right regex passes exactly
//   5. a "-" preceded by a digit is split off ("20-25" -> "20 - 25")
//   6. whitespace runs -> one space, trim, split on spaces (an empty text is one empty token)
//   7. lowercase (ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic capitals)
// Whitespace is Python's \s for str: ASCII space, \t \n \v \f \r, \x1c-\x1f, U+0085, U+00A0,
// U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000.
// Counting follows pymteval to the letter: the candidate length for n-grams adds len - n + 1 per
// sentence (negative for sentences shorter than n), a zero hit count is floored at 1e-15 and a
// zero length at 1e-9, and BP = exp(1 - r/c) when c <= r.
//
// ROUGE-L: pycocoevalcap's Rouge (what e2e-metrics reports): per sentence, LCS against each
// reference, precision = LCS/|hyp| and recall = LCS/|ref|, the MAX precision and the MAX recall
// over the references, F = (1 + b^2) P R / (R + b^2 P) with b = 1.2 (0 when either is 0);
// averaged over the corpus. pycocoevalcap tokenises with Stanford CoreNLP's PTBTokenizer (Java,
// -lowerCase) and drops punctuation tokens; we approximate it (metrics_tokenize_rouge):
//   lowercase; curly quotes -> straight; split on whitespace; split off leading ( [ { < " ' `
//   and currency signs ($ £ € ¥ #); split off trailing . , ; : ! ? ) ] } > " ' % (a run of dots
//   is one token); inside a word split at , ; : ! ? " ( ) [ ] { } < > % and currency signs,
//   except , . : between digits; keep - / & ' . inside words ("family-friendly", "20-25", "3.5");
//   split the clitics n't 's 're 've 'll 'd 'm ("doesn't" -> "does n't", "it's" -> "it 's");
//   then drop the tokens pycocoevalcap drops: '' ' `` ` " ( ) [ ] { } . ? ! , : - -- ... ;
//   (brackets and quotes stand for PTB's -LRB- / `` / '' escapes). An empty result is one empty
//   token, as pycocoevalcap's "".split(" ").
// Known differences from CoreNLP: no abbreviation list ("St." -> "st ."), no Americanisation.
#pragma once
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    int n;
    char **tok;    // into buf
    char *buf;
} TokenList;

void tokens_free(TokenList *t);
void metrics_tokenize_bleu(const char *text, TokenList *out);   // mteval-v13a, lowercased
void metrics_tokenize_rouge(const char *text, TokenList *out);  // PTB-like, lowercased, punctuation dropped
// In place: lowercase UTF-8 text (the mappings listed above keep byte lengths).
void metrics_lowercase(char *s);

typedef struct {
    int64_t hits[4];        // clipped n-gram matches
    int64_t cand_len[4];    // sum over sentences of len - n + 1
    int64_t ref_len;        // sum of the closest reference lengths
    int segments;
} BleuStats;

// Add one hypothesis with its references (n_refs >= 1).
void bleu_add(BleuStats *s, const char *hyp, const char *const *refs, int n_refs);
void bleu_add_tokens(BleuStats *s, const TokenList *hyp, const TokenList *refs, int n_refs);
// Corpus BLEU-4 in [0, 1]; precisions and brevity penalty on request (NULL to skip).
double bleu_score(const BleuStats *s, double precision[4], double *bp);

// Sentence ROUGE-L F (beta 1.2) in [0, 1].
double rouge_l(const char *hyp, const char *const *refs, int n_refs);
double rouge_l_tokens(const TokenList *hyp, const TokenList *refs, int n_refs);

typedef struct {
    int n;                  // segments
    double bleu;            // [0, 1]
    double precision[4], bp;
    int64_t hyp_len, ref_len;
    double rouge_l;         // mean sentence ROUGE-L, [0, 1]
} MetricScores;

// refs[i] holds n_refs[i] references for hyps[i].
void metrics_score(MetricScores *out, char *const *hyps, int n, char **const *refs, const int *n_refs);

// ---- files (e2e-metrics' measure_scores.py conventions) ----

// One hypothesis per line, each stripped of surrounding whitespace; empty lines are kept (as empty
// hypotheses). Returns the count, or -1 with peft_last_error.
int metrics_read_lines(const char *path, char ***lines);
void metrics_free_lines(char **lines, int n);

typedef struct {
    int n;                  // groups (one per hypothesis)
    int *n_refs;
    char ***refs;
} RefGroups;

// References for n_hyps hypotheses, either
//   *.csv / *.tsv: a header naming a source column (mr, src, source, meaning_representation, da,
//     dialogue_act...) and a reference column (ref, reference, target, trg, tgt, human_reference...);
//     consecutive rows with the same source form one group (e2e-metrics' read_and_group_tsv, with
//     its fixes of mis-encoded pound signs and accents); without such a header, 2 columns (src, ref);
//   any other file: groups of lines separated by blank lines (several blank lines count as one).
//     A file without blank lines holds one reference per hypothesis (one per line), unless there
//     is a single hypothesis.
// Fails (naming the counts) when the number of groups is not n_hyps.
int metrics_read_refs(const char *path, int n_hyps, RefGroups *out);
void ref_groups_free(RefGroups *g);
