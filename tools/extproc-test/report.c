/* The three reports of a run: readable text, JSON, JUnit XML. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "extproc_test.h"

/* The length of the valid UTF-8 sequence at `s` (1 to 4 bytes; `left` bytes remain), or 0. */
static size_t utf8_sequence(const unsigned char *s, size_t left) {
  if (s[0] < 0x80) return 1;
  size_t n;
  unsigned min;
  if ((s[0] & 0xe0) == 0xc0)
    n = 2, min = 0x80;
  else if ((s[0] & 0xf0) == 0xe0)
    n = 3, min = 0x800;
  else if ((s[0] & 0xf8) == 0xf0)
    n = 4, min = 0x10000;
  else
    return 0;
  if (n > left) return 0;
  unsigned cp = s[0] & (0x7f >> n);
  for (size_t i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  return cp >= min && cp <= 0x10ffff && (cp < 0xd800 || cp > 0xdfff) ? n : 0;
}

/* Writes `text` with every byte that is not valid UTF-8 replaced by U+FFFD: what a server sent
 * may be anything, and a report must still parse. */
static void put_utf8(FILE *f, const char *text) {
  const unsigned char *s = (const unsigned char *)text;
  for (size_t left = strlen(text); left;) {
    const size_t n = utf8_sequence(s, left);
    if (n)
      fwrite(s, 1, n, f);
    else
      fputs("\xef\xbf\xbd", f);
    s += n ? n : 1;
    left -= n ? n : 1;
  }
}

static const char *status_name(extest_status st) {
  switch (st) {
  case EXTEST_PASSED: return "passed";
  case EXTEST_FAILED: return "failed";
  case EXTEST_ERROR: return "error";
  default: return "skipped";
  }
}

static void count(const extest_suite *s, size_t counts[4]) {
  memset(counts, 0, 4 * sizeof(size_t));
  for (size_t i = 0; i < extest_suite_count(s); i++)
    counts[extest_suite_result(s, i)->status]++;
}

int extest_report_text(const extest_suite *s, FILE *f, bool verbose) {
  size_t counts[4];
  count(s, counts);
  for (size_t i = 0; i < extest_suite_count(s); i++) {
    const extest_result *r = extest_suite_result(s, i);
    if (r->status == EXTEST_SKIPPED) continue;
    static const char *const marks[] = {"PASS", "FAIL", "ERROR"};
    fprintf(f, "%-5s %s: %s (%.1f ms)\n", marks[r->status], r->file, r->name, r->duration_ms);
    for (size_t k = 0; k < r->failure_count; k++)
      fprintf(f, "        %s\n", r->failures[k]);
    /* Unexpected judgments are among the failures already; -v shows the expected ones too. */
    for (size_t k = 0; k < r->judgment_count && verbose; k++)
      fprintf(f, "        envoy: [%s] %s\n", r->judgment_codes[k], r->judgment_messages[k]);
    if (verbose && r->outcome_json) fprintf(f, "        seen: %s\n", r->outcome_json);
  }
  fprintf(f, "%zu passed, %zu failed, %zu errors, %zu skipped\n", counts[EXTEST_PASSED],
          counts[EXTEST_FAILED], counts[EXTEST_ERROR], counts[EXTEST_SKIPPED]);
  return fflush(f) != 0 || ferror(f) ? -1 : 0;
}

int extest_report_json(const extest_suite *s, FILE *f) {
  size_t counts[4];
  count(s, counts);
  cJSON *root = cJSON_CreateObject();
  if (!root) return -1;
  cJSON_AddNumberToObject(root, "passed", (double)counts[EXTEST_PASSED]);
  cJSON_AddNumberToObject(root, "failed", (double)counts[EXTEST_FAILED]);
  cJSON_AddNumberToObject(root, "errors", (double)counts[EXTEST_ERROR]);
  cJSON_AddNumberToObject(root, "skipped", (double)counts[EXTEST_SKIPPED]);
  cJSON *list = cJSON_AddArrayToObject(root, "scenarios");
  for (size_t i = 0; list && i < extest_suite_count(s); i++) {
    const extest_result *r = extest_suite_result(s, i);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddItemToArray(list, o);
    cJSON_AddStringToObject(o, "file", r->file);
    cJSON_AddStringToObject(o, "name", r->name);
    cJSON_AddStringToObject(o, "status", status_name(r->status));
    cJSON *failures = cJSON_AddArrayToObject(o, "failures");
    for (size_t k = 0; failures && k < r->failure_count; k++)
      cJSON_AddItemToArray(failures, cJSON_CreateString(r->failures[k]));
    cJSON *says = cJSON_AddArrayToObject(o, "envoy_says");
    for (size_t k = 0; says && k < r->judgment_count; k++) {
      cJSON *j = cJSON_CreateObject();
      cJSON_AddStringToObject(j, "code", r->judgment_codes[k]);
      cJSON_AddStringToObject(j, "message", r->judgment_messages[k]);
      cJSON_AddItemToArray(says, j);
    }
    cJSON *outcome = r->outcome_json ? cJSON_Parse(r->outcome_json) : NULL;
    cJSON_AddItemToObject(o, "outcome", outcome ? outcome : cJSON_CreateNull());
    cJSON_AddNumberToObject(o, "duration_ms", r->duration_ms);
  }
  char *text = cJSON_Print(root);
  cJSON_Delete(root);
  if (!text) return -1;
  put_utf8(f, text);
  fputc('\n', f);
  free(text);
  return fflush(f) != 0 || ferror(f) ? -1 : 0;
}

static void xml_escaped(FILE *f, const char *text) {
  const unsigned char *s = (const unsigned char *)text;
  for (size_t left = strlen(text); left;) {
    const size_t n = utf8_sequence(s, left);
    switch (n == 1 ? *s : 0) {
    case '<': fputs("&lt;", f); break;
    case '>': fputs("&gt;", f); break;
    case '&': fputs("&amp;", f); break;
    case '"': fputs("&quot;", f); break;
    default:
      /* XML 1.0 has no place for most control characters, nor for bytes that are not UTF-8. */
      if (!n || (*s < 0x20 && *s != '\n' && *s != '\t'))
        fputs("?", f);
      else
        fwrite(s, 1, n, f);
    }
    s += n ? n : 1;
    left -= n ? n : 1;
  }
}

int extest_report_junit(const extest_suite *s, FILE *f) {
  fputs("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"extproc-test\">\n", f);
  const size_t n = extest_suite_count(s);
  for (size_t i = 0; i < n;) {
    /* One testsuite per file: the scenarios of a file are contiguous. */
    const char *file = extest_suite_result(s, i)->file;
    size_t end = i, failures = 0, errors = 0, skipped = 0;
    double seconds = 0;
    for (; end < n && strcmp(extest_suite_result(s, end)->file, file) == 0; end++) {
      const extest_result *r = extest_suite_result(s, end);
      failures += r->status == EXTEST_FAILED;
      errors += r->status == EXTEST_ERROR;
      skipped += r->status == EXTEST_SKIPPED;
      seconds += r->duration_ms / 1000;
    }
    fputs("  <testsuite name=\"", f);
    xml_escaped(f, file);
    fprintf(f, "\" tests=\"%zu\" failures=\"%zu\" errors=\"%zu\" skipped=\"%zu\" time=\"%.3f\">\n",
            end - i, failures, errors, skipped, seconds);
    for (; i < end; i++) {
      const extest_result *r = extest_suite_result(s, i);
      fputs("    <testcase classname=\"", f);
      xml_escaped(f, file);
      fputs("\" name=\"", f);
      xml_escaped(f, r->name);
      fprintf(f, "\" time=\"%.3f\">\n", r->duration_ms / 1000);
      if (r->status == EXTEST_SKIPPED) fputs("      <skipped/>\n", f);
      if (r->status == EXTEST_FAILED || r->status == EXTEST_ERROR) {
        fprintf(f, "      <%s message=\"", r->status == EXTEST_FAILED ? "failure" : "error");
        xml_escaped(f, r->failure_count ? r->failures[0] : "");
        fputs("\">", f);
        for (size_t k = 0; k < r->failure_count; k++) {
          xml_escaped(f, r->failures[k]);
          fputc('\n', f);
        }
        fprintf(f, "</%s>\n", r->status == EXTEST_FAILED ? "failure" : "error");
      }
      if (r->judgment_count) {
        fputs("      <system-out>", f);
        for (size_t k = 0; k < r->judgment_count; k++) {
          fputs("envoy: [", f);
          xml_escaped(f, r->judgment_codes[k]);
          fputs("] ", f);
          xml_escaped(f, r->judgment_messages[k]);
          fputc('\n', f);
        }
        fputs("</system-out>\n", f);
      }
      fputs("    </testcase>\n", f);
    }
    fputs("  </testsuite>\n", f);
  }
  fputs("</testsuites>\n", f);
  return fflush(f) != 0 || ferror(f) ? -1 : 0;
}
