// test_jinja.c: the Jinja interpreter's errors, limits and byte handling (its rendering is checked
// against @huggingface/jinja by tests/cli_template_test.sh).
#include "test.h"
#include "jinja.h"
#include "json_bytes.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

// Renders tmpl with vars (JSON text); returns the output (malloc'd) or NULL with the error.
static char *render(const char *tmpl, const char *vars, size_t *len) {
    JinjaTemplate *t = jinja_parse(tmpl, strlen(tmpl), "t.jinja");
    if (!t) return NULL;
    cJSON *v = json_parse_bytes(vars, strlen(vars));
    char *out = NULL;
    size_t n = 0;
    int rc = jinja_render(t, (const cJSON *const[]){v}, 1, &out, &n);
    cJSON_Delete(v);
    jinja_free(t);
    if (len) *len = n;
    return rc ? NULL : out;
}

TEST(jinja_errors_name_template_line_and_column) {
    CHECK(!render("line one\n{% for x in %}", "{}", NULL));
    CHECK_MSG(strstr(peft_last_error(), "t.jinja:2:"), "%s", peft_last_error());
    CHECK(!render("{{ 1 +\n  }}", "{}", NULL));
    CHECK_MSG(strstr(peft_last_error(), "t.jinja:2:3:"), "%s", peft_last_error());
    CHECK(!render("ab {% include 'x' %}", "{}", NULL));
    CHECK_MSG(strstr(peft_last_error(), "t.jinja:1:7: unknown or unsupported statement 'include'"), "%s", peft_last_error());
    CHECK(!render("{% if x %}never closed", "{}", NULL));
    CHECK_MSG(strstr(peft_last_error(), "t.jinja:1:1: this block is never closed: {% endif %} expected"), "%s", peft_last_error());
    CHECK(!render("x\n  {{ raise_exception('roles must alternate') }}", "{}", NULL));
    CHECK_MSG(strstr(peft_last_error(), "t.jinja:2:") && strstr(peft_last_error(), "raise_exception: roles must alternate"), "%s", peft_last_error());
    CHECK(!render("{{ messages[0].content + 1.5 * none }}", "{\"messages\": [{\"content\": \"a\"}]}", NULL));
    CHECK_MSG(strstr(peft_last_error(), "t.jinja:1:"), "%s", peft_last_error());
}

TEST(jinja_strings_carry_nul_bytes) {
    size_t n;
    char *out = render("[{{ s }}|{{ s|length }}|{{ s[1:] }}]", "{\"s\": \"a\\u0000b\"}", &n);
    CHECK_MSG(out, "%s", peft_last_error());
    CHECK(n == 10 && !memcmp(out, "[a\0b|3|\0b]", 10));
    free(out);
    out = render("{{ 'x\\u0000y' }}", "{}", &n);
    CHECK_MSG(out && n == 3 && !memcmp(out, "x\0y", 3), "%s", out ? out : peft_last_error());
    free(out);
}

TEST(jinja_runaway_templates_are_stopped) {
    CHECK(!render("{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}", "{}", NULL));
    CHECK_MSG(strstr(peft_last_error(), "steps") || strstr(peft_last_error(), "MiB"), "%s", peft_last_error());
    CHECK(!render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "{}", NULL));
    CHECK_MSG(strstr(peft_last_error(), "deep"), "%s", peft_last_error());
    CHECK(!render("{% set ns = namespace(s='xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}", "{}", NULL));
    CHECK_MSG(strstr(peft_last_error(), "MiB"), "%s", peft_last_error());
    char deep[4000] = "{{ ";
    for (int i = 0; i < 1000; i++) strcat(deep, "(");
    CHECK(!render(deep, "{}", NULL));
    CHECK_MSG(strstr(peft_last_error(), "levels deep"), "%s", peft_last_error());
}

TEST(jinja_transformers_whitespace_settings) {
    // trim_blocks, lstrip_blocks and the dropped trailing newline, as transformers sets its environment.
    char *out = render("{% for m in ms %}\n  {% if m %}\n{{ m }}\n  {% endif %}\n{% endfor %}\n", "{\"ms\": [\"a\", \"b\"]}", NULL);
    CHECK_MSG(out && !strcmp(out, "a\nb\n"), "%s", out ? out : peft_last_error());
    free(out);
    out = render("a  {%- if true -%}  b  {%- endif %}\n{# c #}  {{- 'd' -}}  e", "{}", NULL);
    CHECK_MSG(out && !strcmp(out, "abde"), "%s", out ? out : peft_last_error());
    free(out);
}
