/*
 * test_dlopen.c — uses fluxus the way an FFI binding does: the program is not linked with
 * libfluxus; it dlopen()s the built library (path in argv[1]) and resolves every function it
 * calls with dlsym(). fluxus.h is included only for its types and constants.
 *
 * It checks that the exported names resolve, that the loaded library matches the header, and
 * that a push pipeline and a host-driven batch pipeline give the expected results.
 */
#include <fluxus.h>

#include <dlfcn.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define EXPECT(cond)                                                                 \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                              \
        }                                                                            \
    } while (0)

/* Like EXPECT, for a call that must return FLUXUS_OK; prints the library's own message. */
#define EXPECT_OK(call)                                                               \
    do {                                                                              \
        int32_t rc_ = (call);                                                         \
        if (rc_ != FLUXUS_OK) {                                                       \
            fprintf(stderr, "%s:%d: %s returned %s: %s\n", __FILE__, __LINE__, #call, \
                    fn.err_name ? fn.err_name(rc_) : "?", fn.last_error_message());   \
            failures++;                                                               \
        }                                                                             \
    } while (0)

/* The functions this test calls, resolved at run time. */
static struct {
    const char *(*version)(void);
    int32_t (*version_number)(void);
    const char *(*strerror_)(int32_t);
    const char *(*err_name)(int32_t);
    const char *(*last_error_message)(void);
    int32_t (*runtime_new)(fluxus_runtime **);
    int32_t (*runtime_set_workers)(fluxus_runtime *, uint32_t);
    int32_t (*runtime_free)(fluxus_runtime *);
    int32_t (*pipeline_new)(fluxus_pipeline **, fluxus_runtime *, const char *);
    int32_t (*pipeline_set_push_source)(fluxus_pipeline *, const char *);
    int32_t (*pipeline_set_pull_source_batch)(fluxus_pipeline *, const char *, fluxus_pull_batch_fn,
                                              void *, fluxus_user_free_fn);
    int32_t (*pipeline_add_map)(uint32_t *, fluxus_pipeline *, const char *, fluxus_map_fn, void *,
                                fluxus_user_free_fn);
    int32_t (*pipeline_add_map_batch)(uint32_t *, fluxus_pipeline *, const char *,
                                      fluxus_map_batch_fn, void *, fluxus_user_free_fn);
    int32_t (*pipeline_add_sink)(uint32_t *, fluxus_pipeline *, const char *, fluxus_sink_fn,
                                 void *, fluxus_user_free_fn);
    int32_t (*pipeline_add_sink_batch)(uint32_t *, fluxus_pipeline *, const char *,
                                       fluxus_sink_batch_fn, void *, fluxus_user_free_fn);
    int32_t (*stage_set_workers)(fluxus_pipeline *, uint32_t, uint32_t);
    int32_t (*pipeline_start)(fluxus_pipeline *);
    int32_t (*pipeline_push)(fluxus_pipeline *, uint64_t, uint32_t);
    int32_t (*pipeline_close_input)(fluxus_pipeline *);
    int32_t (*pipeline_wait)(fluxus_pipeline *, uint32_t);
    int32_t (*pipeline_get_stats)(fluxus_pipeline_stats *, fluxus_pipeline *);
    int32_t (*pipeline_free)(fluxus_pipeline *);
} fn;

/* dlsym() returns void *; ISO C has no conversion to a function pointer, so copy the bits
 * (what POSIX requires to work). */
static int resolve(void *lib, const char *name, void *slot, size_t size) {
    void *sym = dlsym(lib, name);
    if (sym == NULL) {
        fprintf(stderr, "dlsym(%s) failed: %s\n", name, dlerror());
        return 0;
    }
    memcpy(slot, &sym, size);
    return 1;
}

#define RESOLVE(field) ok &= resolve(lib, "fluxus_" #field, (void *)&fn.field, sizeof fn.field)

static int resolve_all(void *lib) {
    int ok = 1;
    RESOLVE(version);
    RESOLVE(version_number);
    ok &= resolve(lib, "fluxus_strerror", (void *)&fn.strerror_, sizeof fn.strerror_);
    RESOLVE(err_name);
    RESOLVE(last_error_message);
    RESOLVE(runtime_new);
    RESOLVE(runtime_set_workers);
    RESOLVE(runtime_free);
    RESOLVE(pipeline_new);
    RESOLVE(pipeline_set_push_source);
    RESOLVE(pipeline_set_pull_source_batch);
    RESOLVE(pipeline_add_map);
    RESOLVE(pipeline_add_map_batch);
    RESOLVE(pipeline_add_sink);
    RESOLVE(pipeline_add_sink_batch);
    RESOLVE(stage_set_workers);
    RESOLVE(pipeline_start);
    RESOLVE(pipeline_push);
    RESOLVE(pipeline_close_input);
    RESOLVE(pipeline_wait);
    RESOLVE(pipeline_get_stats);
    RESOLVE(pipeline_free);
    return ok;
}

/* ----- callbacks ----- */

static int user_frees = 0; /* user_free calls; each registration below must cause exactly one */

static void count_user_free(void *user) {
    (void)user;
    user_frees++;
}

static int32_t add_one(void *user, uint64_t in, uint64_t *out) {
    (void)user;
    *out = in + 1;
    return 0;
}

struct sink_state {
    uint64_t count;
    uint64_t sum;
    uint64_t last;
    int out_of_order;
};

static int32_t sink_one(void *user, uint64_t item) {
    struct sink_state *s = user;
    if (s->count > 0 && item <= s->last) {
        s->out_of_order = 1;
    }
    s->last = item;
    s->count++;
    s->sum += item;
    return 0;
}

struct counter {
    uint64_t next;
    uint64_t end;
};

static int32_t pull_batch(void *user, uint64_t *items, uint32_t capacity, uint32_t *count) {
    struct counter *c = user;
    uint32_t n = 0;
    while (n < capacity && c->next < c->end) {
        items[n++] = c->next++;
    }
    *count = n;
    return c->next == c->end ? FLUXUS_PULL_END : FLUXUS_PULL_ITEM;
}

static int32_t square_batch(void *user, const uint64_t *in, uint64_t *out, int32_t *status,
                            uint32_t count) {
    (void)user;
    (void)status;
    for (uint32_t i = 0; i < count; i++) {
        out[i] = in[i] * in[i];
    }
    return 0;
}

static int32_t sink_batch(void *user, const uint64_t *items, int32_t *status, uint32_t count) {
    (void)status;
    for (uint32_t i = 0; i < count; i++) {
        sink_one(user, items[i]);
    }
    return 0;
}

/* ----- tests ----- */

static void test_loaded_library_matches_header(void) {
    EXPECT(fn.version_number() == FLUXUS_VERSION_NUMBER);
    EXPECT(strcmp(fn.version(), FLUXUS_VERSION_STRING) == 0);
    EXPECT(strcmp(fn.err_name(FLUXUS_EINVAL), "FLUXUS_EINVAL") == 0);
    EXPECT(fn.strerror_(FLUXUS_EINVAL)[0] != '\0');
    EXPECT(fn.runtime_new(NULL) == FLUXUS_EINVAL);
    EXPECT(fn.pipeline_free(NULL) == FLUXUS_OK);
}

/* Push source -> map with 2 ordered workers -> sink, on the runtime's own threads. */
static void test_push_pipeline_delivers_every_item_in_order(void) {
    enum { N = 10000 };
    fluxus_runtime *rt = NULL;
    fluxus_pipeline *p = NULL;
    struct sink_state s = {0, 0, 0, 0};
    uint32_t map = 0;
    user_frees = 0;

    EXPECT_OK(fn.runtime_new(&rt));
    EXPECT_OK(fn.runtime_set_workers(rt, 2));
    EXPECT_OK(fn.pipeline_new(&p, rt, "dlopen-push"));
    EXPECT_OK(fn.pipeline_set_push_source(p, "host"));
    EXPECT_OK(fn.pipeline_add_map(&map, p, "add-one", add_one, NULL, count_user_free));
    EXPECT_OK(fn.stage_set_workers(p, map, 2));
    EXPECT_OK(fn.pipeline_add_sink(NULL, p, "sum", sink_one, &s, count_user_free));
    EXPECT_OK(fn.pipeline_start(p));
    for (uint64_t i = 0; i < N; i++) {
        EXPECT_OK(fn.pipeline_push(p, i, UINT32_MAX));
    }
    EXPECT_OK(fn.pipeline_close_input(p));
    EXPECT_OK(fn.pipeline_wait(p, UINT32_MAX));

    /* sum of i+1 for i < N */
    EXPECT(s.count == N);
    EXPECT(s.sum == (uint64_t)N * (N + 1) / 2);
    EXPECT(!s.out_of_order);

    fluxus_pipeline_stats st = {.struct_size = sizeof st};
    EXPECT_OK(fn.pipeline_get_stats(&st, p));
    EXPECT(st.admitted == N);
    EXPECT(st.delivered == N);
    EXPECT(st.in_flight == 0);
    EXPECT(st.balanced == 1);
    EXPECT(st.state == FLUXUS_STATE_FINISHED);

    EXPECT_OK(fn.pipeline_free(p));
    EXPECT_OK(fn.runtime_free(rt));
    EXPECT(user_frees == 2);
}

/* Batch pull source -> batch map -> batch sink, host-driven: no fluxus thread at all, the
 * waiting thread runs the work. */
static void test_host_driven_batch_pipeline_runs_on_the_waiting_thread(void) {
    enum { N = 5000 };
    fluxus_runtime *rt = NULL;
    fluxus_pipeline *p = NULL;
    struct counter c = {0, N};
    struct sink_state s = {0, 0, 0, 0};
    user_frees = 0;

    EXPECT_OK(fn.runtime_new(&rt));
    EXPECT_OK(fn.runtime_set_workers(rt, 0));
    EXPECT_OK(fn.pipeline_new(&p, rt, "dlopen-host"));
    EXPECT_OK(fn.pipeline_set_pull_source_batch(p, "count", pull_batch, &c, count_user_free));
    EXPECT_OK(fn.pipeline_add_map_batch(NULL, p, "square", square_batch, NULL, count_user_free));
    EXPECT_OK(fn.pipeline_add_sink_batch(NULL, p, "sum", sink_batch, &s, count_user_free));
    EXPECT_OK(fn.pipeline_start(p));
    EXPECT_OK(fn.pipeline_wait(p, UINT32_MAX));

    /* sum of i^2 for i < N */
    uint64_t n = N;
    EXPECT(s.count == N);
    EXPECT(s.sum == (n - 1) * n * (2 * n - 1) / 6);
    EXPECT(!s.out_of_order);

    fluxus_pipeline_stats st = {.struct_size = sizeof st};
    EXPECT_OK(fn.pipeline_get_stats(&st, p));
    EXPECT(st.admitted == N && st.delivered == N && st.balanced == 1);

    EXPECT_OK(fn.pipeline_free(p));
    EXPECT_OK(fn.runtime_free(rt));
    EXPECT(user_frees == 3);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s path/to/libfluxus.so\n", argv[0]);
        return 2;
    }
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "dlopen(%s) failed: %s\n", argv[1], dlerror());
        return 1;
    }
    if (!resolve_all(lib)) {
        return 1;
    }
    printf("loaded fluxus %s from %s\n", fn.version(), argv[1]);

    struct {
        const char *name;
        void (*run)(void);
    } tests[] = {
        {"loaded library matches header", test_loaded_library_matches_header},
        {"push pipeline delivers every item in order",
         test_push_pipeline_delivers_every_item_in_order},
        {"host-driven batch pipeline runs on the waiting thread",
         test_host_driven_batch_pipeline_runs_on_the_waiting_thread},
    };
    int failed_tests = 0;
    for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
        int before = failures;
        tests[i].run();
        int ok = failures == before;
        failed_tests += !ok;
        printf("%s - %s\n", ok ? "ok" : "FAIL", tests[i].name);
    }

    /* Unload last, so a library that leaves threads running past its _free calls crashes
     * here rather than silently. */
    if (dlclose(lib) != 0) {
        fprintf(stderr, "dlclose failed: %s\n", dlerror());
        return 1;
    }
    printf("%d of %d test cases failed\n", failed_tests, (int)(sizeof tests / sizeof tests[0]));
    return failed_tests == 0 ? 0 : 1;
}
