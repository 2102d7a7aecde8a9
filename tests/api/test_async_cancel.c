/*
 * The async cancel hook (fluxus_stage_set_async_cancel): the host hears, once per started item,
 * that fluxus gave up on it, with the item's completion token and the reason (the stage timeout
 * or a cancel), so it can abandon the work; never for an item whose completion was accepted.
 */
#include "test_util.h"

#include <pthread.h>
#include <string.h>

#define N 64u

typedef struct host {
    pthread_mutex_t mu;
    uint64_t completion[N]; /* by item; 0: not started */
    uint32_t started;
    uint32_t complete_in_time; /* items below this are completed at once by the start callback */
    /* the hook's record */
    uint32_t hooked[N];
    int32_t why[N];
    uint64_t hook_token[N];
    uint32_t hook_calls, hook_bad;
    fluxus_pipeline *p;
} host;

static int32_t start_async(void *user, uint64_t item, uint64_t completion) {
    host *h = (host *)user;
    pthread_mutex_lock(&h->mu);
    h->completion[item] = completion;
    h->started++;
    pthread_mutex_unlock(&h->mu);
    if (item < h->complete_in_time && fluxus_pipeline_complete_async(h->p, completion, 0, item) != 0) {
        pthread_mutex_lock(&h->mu);
        h->hook_bad++; /* not expected: counted, checked by the test */
        pthread_mutex_unlock(&h->mu);
    }
    return 0;
}

static void on_cancel(void *user, uint64_t item, uint64_t completion, int32_t why) {
    host *h = (host *)user;
    pthread_mutex_lock(&h->mu);
    h->hook_calls++;
    if (item >= N || h->completion[item] != completion) {
        h->hook_bad++;
    } else {
        h->hooked[item]++;
        h->why[item] = why;
        h->hook_token[item] = completion;
    }
    pthread_mutex_unlock(&h->mu);
}

static int32_t sink_ok(void *user, uint64_t item) {
    (void)user;
    (void)item;
    return 0;
}

static uint32_t user_frees;
static void count_free(void *user) {
    (void)user;
    TU_ADD(&user_frees, 1);
}

/* A pipeline: pull 0..N-1 -> async (hooked) -> sink. */
static uint32_t build(host *h, fluxus_runtime *rt, tu_range_source *src, uint64_t timeout_us) {
    uint32_t a = 0;
    TU_OK(fluxus_pipeline_new(&h->p, rt, "async-cancel"));
    TU_OK(fluxus_pipeline_set_pull_source(h->p, "src", tu_range_pull, src, NULL));
    TU_OK(fluxus_pipeline_add_async_map(&a, h->p, "remote", start_async, h, NULL));
    TU_OK(fluxus_stage_set_in_flight(h->p, a, N));
    TU_OK(fluxus_stage_set_order(h->p, a, FLUXUS_ORDER_UNORDERED));
    TU_OK(fluxus_stage_set_error_policy(h->p, a, FLUXUS_ERROR_SKIP)); /* timeouts: the rest go on */
    if (timeout_us) TU_OK(fluxus_stage_set_timeout_us(h->p, a, timeout_us));
    TU_OK(fluxus_stage_set_async_cancel(h->p, a, on_cancel, h, count_free));
    TU_OK(fluxus_pipeline_add_sink(NULL, h->p, "out", sink_ok, NULL, NULL));
    return a;
}

static void host_init(host *h, uint32_t complete_in_time) {
    memset(h, 0, sizeof *h);
    pthread_mutex_init(&h->mu, NULL);
    h->complete_in_time = complete_in_time;
}

static void test_timed_out_items_are_told_once_with_their_token(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_range_source src = {0, N, 0};
    host h;
    uint64_t i;
    fluxus_pipeline_stats ps;
    (void)state;
    host_init(&h, N / 2); /* the first half completes at once, the rest never in time */
    user_frees = 0;
    build(&h, rt, &src, 2000);
    TU_OK(fluxus_pipeline_start(h.p));
    TU_OK(tu_wait(h.p));
    tu_stats(h.p, &ps);
    assert_int_equal(ps.delivered, N / 2);
    assert_int_equal(ps.failed, N / 2);
    pthread_mutex_lock(&h.mu);
    assert_int_equal(h.hook_bad, 0);
    assert_int_equal(h.hook_calls, N / 2);
    for (i = 0; i < N; i++) {
        if (i < N / 2) {
            assert_int_equal(h.hooked[i], 0); /* completed in time: never told */
        } else {
            assert_int_equal(h.hooked[i], 1);
            assert_int_equal(h.why[i], FLUXUS_ETIMEDOUT);
        }
    }
    pthread_mutex_unlock(&h.mu);
    /* The host abandons them: their late completions are refused, as the hook said. */
    for (i = N / 2; i < N; i++)
        TU_EXPECT(FLUXUS_ETIMEDOUT, fluxus_pipeline_complete_async(h.p, h.hook_token[i], 0, i));
    TU_OK(fluxus_pipeline_free(h.p));
    assert_int_equal(user_frees, 1);
    TU_OK(fluxus_runtime_free(rt));
    pthread_mutex_destroy(&h.mu);
}

static void test_a_cancel_tells_every_pending_item_and_no_completed_one(void **state) {
    fluxus_runtime *rt = tu_runtime(2);
    tu_range_source src = {0, N, 0};
    host h;
    uint64_t i, t0;
    (void)state;
    host_init(&h, N / 4); /* a quarter completes at once; the rest stays pending */
    user_frees = 0;
    build(&h, rt, &src, 0);
    TU_OK(fluxus_pipeline_start(h.p));
    t0 = tu_now_ms();
    for (;;) {
        uint32_t started;
        pthread_mutex_lock(&h.mu);
        started = h.started;
        pthread_mutex_unlock(&h.mu);
        if (started == N) break;
        assert_true(tu_now_ms() - t0 < TU_WAIT_MS);
        tu_sleep_us(1000);
    }
    TU_OK(fluxus_pipeline_cancel(h.p));
    TU_EXPECT(FLUXUS_ECANCELED, tu_wait(h.p));
    pthread_mutex_lock(&h.mu);
    assert_int_equal(h.hook_bad, 0);
    assert_int_equal(h.hook_calls, N - N / 4);
    for (i = 0; i < N; i++) {
        assert_int_equal(h.hooked[i], i < N / 4 ? 0 : 1);
        if (i >= N / 4) assert_int_equal(h.why[i], FLUXUS_ECANCELED);
    }
    pthread_mutex_unlock(&h.mu);
    for (i = N / 4; i < N; i++)
        TU_EXPECT(FLUXUS_ECANCELED, fluxus_pipeline_complete_async(h.p, h.hook_token[i], 0, i));
    TU_OK(fluxus_pipeline_free(h.p));
    assert_int_equal(user_frees, 1);
    TU_OK(fluxus_runtime_free(rt));
    pthread_mutex_destroy(&h.mu);
}

static void test_the_hook_belongs_to_async_stages_and_replaces_itself(void **state) {
    fluxus_runtime *rt = tu_runtime(1);
    fluxus_pipeline *p = NULL;
    uint32_t m = 0, a = 0;
    host h;
    (void)state;
    host_init(&h, 0);
    user_frees = 0;
    TU_OK(fluxus_pipeline_new(&p, rt, "kinds"));
    TU_OK(fluxus_pipeline_set_push_source(p, "in"));
    TU_OK(fluxus_pipeline_add_map(&m, p, "m", tu_identity_map, NULL, NULL));
    TU_OK(fluxus_pipeline_add_async_map(&a, p, "a", start_async, &h, NULL));
    TU_EXPECT(FLUXUS_EINVAL, fluxus_stage_set_async_cancel(p, m, on_cancel, &h, count_free));
    TU_EXPECT(FLUXUS_ENOTFOUND, fluxus_stage_set_async_cancel(p, 9, on_cancel, &h, count_free));
    assert_int_equal(user_frees, 0);
    TU_OK(fluxus_stage_set_async_cancel(p, a, on_cancel, &h, count_free));
    TU_OK(fluxus_stage_set_async_cancel(p, a, NULL, &h, count_free)); /* replaces: frees one */
    assert_int_equal(user_frees, 1);
    TU_OK(fluxus_pipeline_free(p));
    assert_int_equal(user_frees, 2);
    TU_OK(fluxus_runtime_free(rt));
    pthread_mutex_destroy(&h.mu);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timed_out_items_are_told_once_with_their_token),
        cmocka_unit_test(test_a_cancel_tells_every_pending_item_and_no_completed_one),
        cmocka_unit_test(test_the_hook_belongs_to_async_stages_and_replaces_itself),
    };
    return TU_RUN_GROUP(tests);
}
