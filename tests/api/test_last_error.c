/*
 * The per-thread last-error message and fluxus_last_error_copy(): the copy is exact,
 * NUL-terminated and cut at a UTF-8 character boundary when the buffer is short; the length is
 * always reported; reading never changes the message; each thread has its own; and a message
 * longer than FLUXUS_ERROR_MESSAGE_MAX is stored cut at a character boundary with a "..." marker.
 */
#include "test_util.h"

/* A stage name of 2-, 3- and 4-byte UTF-8 characters ("é€😀"), so that a cut at any byte
 * offset can fall inside a character. */
#define MIXED "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"

/* 1 if s[0..len) is well-formed UTF-8 (no truncated or stray continuation bytes). */
static int is_utf8(const char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3
                                : (c & 0xF8) == 0xF0 ? 4 : 0;
        size_t k;
        if (n == 0 || i + n > len) {
            return 0;
        }
        for (k = 1; k < n; k++) {
            if (((unsigned char)s[i + k] & 0xC0) != 0x80) {
                return 0;
            }
        }
        i += n;
    }
    return 1;
}

/* A host-driven runtime and a pipeline with one map stage called `name`. */
typedef struct fixture {
    fluxus_runtime *rt;
    fluxus_pipeline *p;
    uint32_t stage;
} fixture;

static int32_t nop_map(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in;
    return 0;
}

static void fixture_init(fixture *f, const char *stage_name) {
    f->rt = tu_runtime(0);
    f->p = tu_pipeline(f->rt, "last-error", NULL);
    TU_OK(fluxus_pipeline_add_map(&f->stage, f->p, stage_name, nop_map, NULL, NULL));
}

static void fixture_free(fixture *f) {
    TU_OK(fluxus_pipeline_free(f->p));
    TU_OK(fluxus_runtime_free(f->rt));
}

/* Makes the calling thread's last call fail with a message naming the stage. */
static void fail_on_stage(fixture *f) {
    TU_EXPECT(FLUXUS_ERANGE, fluxus_stage_set_workers(f->p, f->stage, 0));
}

static void test_last_error_copy_copies_the_whole_message_and_its_length(void **state) {
    fixture f;
    char buf[FLUXUS_ERROR_MESSAGE_MAX];
    size_t len = 12345;
    (void)state;

    fixture_init(&f, "copied");
    fail_on_stage(&f);
    assert_int_equal(fluxus_last_error_copy(buf, sizeof buf, &len), FLUXUS_OK);
    assert_string_equal(buf, fluxus_last_error_message());
    assert_int_equal(len, strlen(buf));
    assert_non_null(strstr(buf, "'copied'"));
    /* A buffer of exactly len + 1 bytes is enough. */
    {
        char exact[128];
        assert_true(len + 1 <= sizeof exact);
        memset(exact, 'x', sizeof exact);
        assert_int_equal(fluxus_last_error_copy(exact, len + 1, NULL), FLUXUS_OK);
        assert_string_equal(exact, buf);
    }
    fixture_free(&f);
}

static void test_last_error_copy_with_a_null_buffer_and_no_capacity_reports_the_length(
    void **state) {
    fixture f;
    size_t len = 0;
    (void)state;

    fixture_init(&f, "query");
    fail_on_stage(&f);
    assert_int_equal(fluxus_last_error_copy(NULL, 0, &len), FLUXUS_OK);
    assert_int_equal(len, strlen(fluxus_last_error_message()));
    assert_true(len > 0);
    /* out_len may be NULL. */
    assert_int_equal(fluxus_last_error_copy(NULL, 0, NULL), FLUXUS_OK);
    fixture_free(&f);
}

static void test_last_error_copy_into_a_short_buffer_returns_erange_and_a_utf8_prefix(
    void **state) {
    fixture f;
    char full[FLUXUS_ERROR_MESSAGE_MAX];
    size_t full_len = 0, cap;
    (void)state;

    fixture_init(&f, MIXED MIXED MIXED MIXED);
    fail_on_stage(&f);
    assert_int_equal(fluxus_last_error_copy(full, sizeof full, &full_len), FLUXUS_OK);
    assert_true(is_utf8(full, full_len));

    /* Every capacity from 1 byte to the full size: a NUL-terminated prefix that is valid UTF-8
     * and loses at most the 3 bytes of a cut character. */
    for (cap = 1; cap <= full_len + 1; cap++) {
        char buf[FLUXUS_ERROR_MESSAGE_MAX + 1];
        size_t len = 0, got;
        int32_t rc;
        memset(buf, 0x7F, sizeof buf);
        rc = fluxus_last_error_copy(buf, cap, &len);
        assert_int_equal(len, full_len);
        assert_int_equal(rc, cap > full_len ? FLUXUS_OK : FLUXUS_ERANGE);
        got = strlen(buf);
        assert_true(got < cap);
        assert_true(got + 4 >= cap || got == full_len);
        assert_true(is_utf8(buf, got));
        assert_memory_equal(buf, full, got);
        assert_int_equal((unsigned char)buf[cap], 0x7F); /* nothing written past cap */
    }
    /* The failed copies left the message as it was. */
    assert_string_equal(fluxus_last_error_message(), full);
    fixture_free(&f);
}

static void test_last_error_copy_with_no_capacity_writes_nothing(void **state) {
    fixture f;
    char buf[4] = {'a', 'b', 'c', '\0'};
    size_t len = 0;
    (void)state;

    fixture_init(&f, "nothing");
    fail_on_stage(&f);
    assert_int_equal(fluxus_last_error_copy(buf, 0, &len), FLUXUS_ERANGE);
    assert_string_equal(buf, "abc");
    assert_int_equal(len, strlen(fluxus_last_error_message()));
    tu_assert_described(FLUXUS_ERANGE);
    fixture_free(&f);
}

static void test_last_error_copy_rejects_a_null_buffer_with_capacity_and_keeps_the_message(
    void **state) {
    fixture f;
    char before[FLUXUS_ERROR_MESSAGE_MAX];
    size_t len = 0;
    (void)state;

    fixture_init(&f, "kept");
    fail_on_stage(&f);
    assert_int_equal(fluxus_last_error_copy(before, sizeof before, NULL), FLUXUS_OK);
    assert_int_equal(fluxus_last_error_copy(NULL, 16, &len), FLUXUS_EINVAL);
    tu_assert_described(FLUXUS_EINVAL);
    assert_int_equal(len, strlen(before));
    /* Misuse of the reader does not replace the message it was asked for. */
    assert_string_equal(fluxus_last_error_message(), before);
    fixture_free(&f);
}

static void test_reading_the_last_error_does_not_change_it(void **state) {
    fixture f;
    char before[FLUXUS_ERROR_MESSAGE_MAX], after[FLUXUS_ERROR_MESSAGE_MAX];
    (void)state;

    fixture_init(&f, "read");
    fail_on_stage(&f);
    assert_int_equal(fluxus_last_error_copy(before, sizeof before, NULL), FLUXUS_OK);
    (void)fluxus_strerror(FLUXUS_EINVAL);
    (void)fluxus_err_name(FLUXUS_EINVAL);
    (void)fluxus_last_error_message();
    assert_int_equal(fluxus_last_error_copy(after, sizeof after, NULL), FLUXUS_OK);
    assert_string_equal(after, before);
    fixture_free(&f);
}

static void test_a_successful_call_clears_the_message_and_the_copy_is_empty(void **state) {
    fixture f;
    char buf[8] = "xxxxxxx";
    size_t len = 99;
    (void)state;

    fixture_init(&f, "cleared");
    fail_on_stage(&f);
    TU_OK(fluxus_stage_set_workers(f.p, f.stage, 2));
    assert_string_equal(fluxus_last_error_message(), "");
    assert_int_equal(fluxus_last_error_copy(buf, sizeof buf, &len), FLUXUS_OK);
    assert_string_equal(buf, "");
    assert_int_equal(len, 0);
    /* Even the empty message needs its NUL. */
    assert_int_equal(fluxus_last_error_copy(buf, 0, &len), FLUXUS_ERANGE);
    fixture_free(&f);
}

/* A stage name far longer than any message can be: the stored message is cut at a character
 * boundary and ends in "...". (tests/unit/test_status.cpp checks the cut at every length.) */
static void test_a_formatted_message_too_long_is_cut_at_a_character_boundary_with_a_marker(
    void **state) {
    enum { REPEAT = 300 }; /* 9 bytes each: 2700 bytes */
    char name[REPEAT * 9 + 1];
    char buf[FLUXUS_ERROR_MESSAGE_MAX];
    size_t len = 0, i;
    const char *quote, *body_end;
    fixture f;
    (void)state;

    for (i = 0; i < REPEAT; i++) {
        memcpy(name + i * 9, MIXED, 9);
    }
    name[REPEAT * 9] = '\0';
    fixture_init(&f, name);
    fail_on_stage(&f);

    assert_int_equal(fluxus_last_error_copy(buf, sizeof buf, &len), FLUXUS_OK);
    assert_int_equal(len, strlen(fluxus_last_error_message()));
    assert_true(len <= FLUXUS_ERROR_MESSAGE_MAX - 1);
    assert_true(len >= FLUXUS_ERROR_MESSAGE_MAX - 1 - 3); /* at most one 4-byte character lost */
    assert_true(is_utf8(buf, len));
    assert_memory_equal(buf + len - 3, "...", 3);
    /* Before the marker: the start of the message, then as much of the name as fits. */
    quote = strchr(buf, '\'');
    assert_non_null(quote);
    body_end = buf + len - 3;
    assert_true(body_end > quote + 1);
    assert_memory_equal(quote + 1, name, (size_t)(body_end - (quote + 1)));
    fixture_free(&f);
}

/* ----- one message per thread ----- */

typedef struct thread_case {
    fixture *f;
    uint32_t workers; /* the value this thread fails with: it shows in the message */
    char expected[64];
    int fresh_ok;  /* before failing, the thread's copy was "" and FLUXUS_OK */
    int copied_ok; /* its copy matched its own message */
} thread_case;

static void *fail_and_copy(void *arg) {
    thread_case *c = arg;
    char buf[FLUXUS_ERROR_MESSAGE_MAX];
    size_t len = 99;
    int i;

    c->fresh_ok = fluxus_last_error_copy(buf, sizeof buf, &len) == FLUXUS_OK && len == 0 &&
                  buf[0] == '\0';
    c->copied_ok = 1;
    for (i = 0; i < 200; i++) {
        if (fluxus_stage_set_workers(c->f->p, c->f->stage, c->workers) != FLUXUS_ERANGE ||
            fluxus_last_error_copy(buf, sizeof buf, &len) != FLUXUS_OK ||
            strstr(buf, c->expected) == NULL || len != strlen(buf)) {
            c->copied_ok = 0;
        }
    }
    return NULL;
}

static void test_each_thread_copies_its_own_message(void **state) {
    fixture f;
    pthread_t th[2];
    thread_case cases[2];
    char mine[FLUXUS_ERROR_MESSAGE_MAX];
    int i;
    (void)state;

    fixture_init(&f, "threads");
    fail_on_stage(&f); /* workers = 0 */
    assert_int_equal(fluxus_last_error_copy(mine, sizeof mine, NULL), FLUXUS_OK);
    for (i = 0; i < 2; i++) {
        memset(&cases[i], 0, sizeof cases[i]);
        cases[i].f = &f;
        cases[i].workers = 1000u + (uint32_t)i;
        snprintf(cases[i].expected, sizeof cases[i].expected, "%u is not", cases[i].workers);
        assert_int_equal(pthread_create(&th[i], NULL, fail_and_copy, &cases[i]), 0);
    }
    for (i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(cases[i].fresh_ok, 1);
        assert_int_equal(cases[i].copied_ok, 1);
    }
    /* The other threads' failures left this thread's message alone. */
    assert_string_equal(fluxus_last_error_message(), mine);
    fixture_free(&f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_last_error_copy_copies_the_whole_message_and_its_length),
        cmocka_unit_test(
            test_last_error_copy_with_a_null_buffer_and_no_capacity_reports_the_length),
        cmocka_unit_test(test_last_error_copy_into_a_short_buffer_returns_erange_and_a_utf8_prefix),
        cmocka_unit_test(test_last_error_copy_with_no_capacity_writes_nothing),
        cmocka_unit_test(
            test_last_error_copy_rejects_a_null_buffer_with_capacity_and_keeps_the_message),
        cmocka_unit_test(test_reading_the_last_error_does_not_change_it),
        cmocka_unit_test(test_a_successful_call_clears_the_message_and_the_copy_is_empty),
        cmocka_unit_test(
            test_a_formatted_message_too_long_is_cut_at_a_character_boundary_with_a_marker),
        cmocka_unit_test(test_each_thread_copies_its_own_message),
    };
    return TU_RUN_GROUP(tests);
}
