// csv.c: a CSV record reader (RFC 4180, as Python's csv module writes it): fields separated by
// commas, records by LF or CRLF; a quoted field may hold commas, line breaks and doubled quotes.
#include "data.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

void csv_reader_init(CsvReader *r, const char *path, const char *text, size_t len) {
    r->path = path;
    r->text = text;
    r->len = len;
    r->pos = 0;
    r->line = 1;
    // A UTF-8 byte-order mark (Excel writes one) is not part of the first column's name.
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) r->pos = 3;
}

void csv_record_free(CsvRecord *rec) {
    for (int i = 0; i < rec->n; i++) free(rec->fields[i]);
    free(rec->fields);
    memset(rec, 0, sizeof *rec);
}

typedef struct { char *s; size_t n, cap; } Buf;

static void buf_put(Buf *b, char c) {
    if (b->n + 1 >= b->cap) { b->cap = b->cap ? 2 * b->cap : 64; b->s = xrealloc(b->s, b->cap); }
    b->s[b->n++] = c;
    b->s[b->n] = 0;
}

static void add_field(CsvRecord *rec, Buf *b) {
    rec->fields = xrealloc(rec->fields, sizeof(char *) * (rec->n + 1));
    rec->fields[rec->n++] = b->s ? b->s : xstrdup("");
    memset(b, 0, sizeof *b);
}

static bool at_record_end(const CsvReader *r) {
    return r->pos >= r->len || r->text[r->pos] == '\n' || (r->text[r->pos] == '\r' && (r->pos + 1 >= r->len || r->text[r->pos + 1] == '\n'));
}

static void skip_record_end(CsvReader *r) {
    if (r->pos < r->len && r->text[r->pos] == '\r') r->pos++;
    if (r->pos < r->len && r->text[r->pos] == '\n') { r->pos++; r->line++; }
}

// A quoted field, from just after its opening quote to just after its closing one.
static int read_quoted(CsvReader *r, Buf *b, int start_line) {
    for (;;) {
        if (r->pos >= r->len) return peft_fail("%s:%d: unterminated quoted field (no closing \")", r->path, start_line);
        char c = r->text[r->pos++];
        if (c == '"') {
            if (r->pos < r->len && r->text[r->pos] == '"') { buf_put(b, '"'); r->pos++; continue; }
            return 0;
        }
        if (c == '\n') r->line++;
        buf_put(b, c);
    }
}

int csv_next(CsvReader *r, CsvRecord *rec) {
    memset(rec, 0, sizeof *rec);
    // Blank lines between records are skipped (Python's csv returns them as empty rows).
    while (r->pos < r->len && at_record_end(r)) skip_record_end(r);
    if (r->pos >= r->len) return 0;
    rec->line = r->line;
    Buf b = {0};
    for (;;) {
        if (r->pos < r->len && r->text[r->pos] == '"') {
            int field_line = r->line;
            r->pos++;
            if (read_quoted(r, &b, field_line)) { free(b.s); csv_record_free(rec); return -1; }
            if (!at_record_end(r) && r->text[r->pos] != ',') {
                free(b.s);
                csv_record_free(rec);
                return peft_fail("%s:%d: unexpected character '%c' after a closing quote (a field with quotes must be quoted whole, its quotes doubled)",
                                 r->path, r->line, r->text[r->pos]);
            }
        } else {
            while (!at_record_end(r) && r->text[r->pos] != ',') buf_put(&b, r->text[r->pos++]);
        }
        add_field(rec, &b);
        if (at_record_end(r)) { skip_record_end(r); return 1; }
        r->pos++;  // the comma
    }
}
